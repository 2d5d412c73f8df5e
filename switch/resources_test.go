package l4

import (
	"errors"
	"testing"
)

// Resource bounds of the data plane's state: the fragment store, the
// pool's reserve, rule quotas.

// laterFrag is the later fragment of datagram id from src.
func laterFrag(t *testing.T, src string, id uint16) *Frame {
	t.Helper()
	_, l := fragments4(id)
	l.srcIP = src
	return parsed(t, l)
}

// fragLab is a switch whose fragment store holds total and perSource
// buffers of 2 KiB; freed collects the evicted handles.
func fragLab(t *testing.T, total, perSource int) (*Switch, *[]uint64) {
	s := newTestSwitch(t)
	var freed []uint64
	s.frags.configure(fragLimits{total: int64(total) * 2048, perSource: int64(perSource) * 2048, bufSize: 2048,
		free: func(h uint64) { freed = append(freed, h) }})
	return s, &freed
}

// TestFragStorePerSource: one source flooding later fragments keeps at most
// its own share, losing its oldest first; another source's datagram next
// to it is held and released whole when its first fragment comes.
func TestFragStorePerSource(t *testing.T) {
	s, freed := fragLab(t, 64, 8)
	must(t, s.Table.Insert(reg(ListenKey(MustParseAddr(ipLocal), ProtoUDP, 5353), epB)))
	for id := range 1000 {
		wantVerdict(t, s.Decide(nic, laterFrag(t, "198.18.1.66", uint16(id)), uint64(id)), Verdict{Action: ActHold})
	}
	if got := s.frags.heldB.Load(); got != 8*2048 {
		t.Fatalf("the flooding source holds %d bytes, want its limit %d", got, 8*2048)
	}
	if len(*freed) != 992 || s.frags.evicted.Load() != 992 {
		t.Fatalf("%d freed, %d counted; want 992", len(*freed), s.frags.evicted.Load())
	}
	for i, h := range *freed {
		if h != uint64(i) {
			t.Fatalf("evicted %d as the %dth: not oldest first", h, i)
		}
	}
	// The legitimate sender's datagram.
	first, later := fragments4(7)
	first.srcIP, later.srcIP = "198.18.1.2", "198.18.1.2"
	wantVerdict(t, s.Decide(nic, parsed(t, later), 5000), Verdict{Action: ActHold})
	f := parsed(t, first)
	wantVerdict(t, s.Decide(nic, f, 5001), Verdict{Action: ActForward, To: epB, Release: true})
	if held := s.TakeHeld(f, nil); len(held) != 1 || held[0] != 5000 {
		t.Fatalf("held %v, want [5000]", held)
	}
}

// TestFragStoreTotal: many sources together keep the store within its
// bytes; above it the oldest datagrams go until a quarter is free, and
// every handle is either held or freed, never lost.
func TestFragStoreTotal(t *testing.T) {
	s, freed := fragLab(t, 64, 8)
	const n = 5000
	for id := range n {
		src := "198.18.2." + itoa(id%200)
		v := s.Decide(nic, laterFrag(t, src, uint16(id)), uint64(id))
		wantVerdict(t, v, Verdict{Action: ActHold})
		if b := s.frags.heldB.Load(); b > 64*2048 {
			t.Fatalf("after %d fragments the store holds %d bytes", id+1, b)
		}
	}
	held := int(s.frags.heldB.Load() / 2048)
	if held+len(*freed) != n {
		t.Fatalf("%d held + %d freed != %d", held, len(*freed), n)
	}
	var rest []uint64
	s.frags.clear(func(h uint64) { rest = append(rest, h) })
	if len(rest) != held || s.frags.heldB.Load() != 0 || s.FragLen() != 0 || len(s.frags.srcs) != 0 {
		t.Fatalf("clear freed %d of %d; %d bytes, %d entries, %d sources left", len(rest), held, s.frags.heldB.Load(), s.FragLen(), len(s.frags.srcs))
	}
}

// TestFragStoreMayHold: while the pool is down to its reserve, nothing is
// held.
func TestFragStoreMayHold(t *testing.T) {
	s, _ := fragLab(t, 64, 8)
	s.frags.lim.mayHold = func() bool { return false }
	wantVerdict(t, s.Decide(nic, laterFrag(t, "198.18.1.66", 1), 1), drop(DropFragHoldFull))
	if s.FragLen() != 0 {
		t.Fatal("an entry stayed")
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// TestPoolReserve: a limited cache stops above the reserve; an unlimited
// one takes the reserve too.
func TestPoolReserve(t *testing.T) {
	p := poolTestNew(t, 1024, 0)
	p.SetReserve(256)
	lim := p.NewLimitedCache()
	var got []*Buf
	for b := lim.Get(); b != nil; b = lim.Get() {
		got = append(got, b)
	}
	if free := p.Stats().SharedFree; free < 256 || free > 256+2*BufCacheBatch {
		t.Fatalf("a limited cache left %d free, want the reserve of 256 (and less than two chains more)", free)
	}
	if p.Stats().Reserved == 0 {
		t.Error("refusal not counted")
	}
	nicCache := p.NewCache()
	n := 0
	for b := nicCache.Get(); b != nil; b = nicCache.Get() {
		got = append(got, b)
		n++
	}
	if n < 256 || len(got) != 1024 {
		t.Fatalf("the NIC's cache took %d, %d in all", n, len(got))
	}
	for _, b := range got {
		b.Release()
	}
}

// TestRuleQuota: rules count against their owner's quota and its parent's
// at insert; learning beyond it drops the frame as rule_limit; removing
// rules gives the room back.
func TestRuleQuota(t *testing.T) {
	s := newTestSwitch(t)
	// Ports with quotas from before their first rule (as AddPortQuota does).
	epA, epB := Owner{Port: 20, Kind: PortEndpoint}, Owner{Port: 21, Kind: PortEndpoint}
	user := NewRuleQuota(5, nil)
	qa, qb := NewRuleQuota(3, user), NewRuleQuota(3, user)
	s.Table.SetQuota(epA.Port, qa)
	s.Table.SetQuota(epB.Port, qb)
	out := func(o Owner, sport uint16) Verdict {
		return s.Decide(o, parsed(t, tcp4(macNIC, macRemote, ipLocal, sport, ipRemote, 443)), 0)
	}
	for i := range 3 {
		wantVerdict(t, out(epA, uint16(50000+i)), Verdict{Action: ActUplink})
	}
	wantVerdict(t, out(epA, 50010), drop(DropRuleLimit))
	wantVerdict(t, out(epB, 50020), Verdict{Action: ActUplink})
	wantVerdict(t, out(epB, 50021), Verdict{Action: ActUplink})
	wantVerdict(t, out(epB, 50022), drop(DropRuleLimit)) // the user's 5
	if qa.Len() != 3 || qb.Len() != 2 || user.Len() != 5 || qa.Refused() != 1 || user.Refused() != 1 {
		t.Fatalf("counts a %d b %d user %d, refused a %d user %d", qa.Len(), qb.Len(), user.Len(), qa.Refused(), user.Refused())
	}
	err := s.Table.Insert(reg(ListenKey(MustParseAddr(ipLocal), ProtoUDP, 9), epB))
	if !errors.Is(err, ErrRuleLimit) {
		t.Fatalf("registered rule beyond the limit: %v", err)
	}
	// A learned flow goes on.
	wantVerdict(t, out(epA, 50000), Verdict{Action: ActUplink})
	s.Table.RemoveOwner(epA.Port)
	if qa.Len() != 0 || user.Len() != 2 {
		t.Fatalf("after RemoveOwner: a %d user %d", qa.Len(), user.Len())
	}
	wantVerdict(t, out(epB, 50022), Verdict{Action: ActUplink})
}

// TestFragFloodDoesNotAllocate: once the store is full, a flood of later
// fragments of new datagrams reuses the entries it evicts.
func TestFragFloodDoesNotAllocate(t *testing.T) {
	s, freed := fragLab(t, 64, 8)
	frames := make([]*Frame, 256)
	for i := range frames {
		frames[i] = laterFrag(t, "198.18.2."+itoa(i%16), uint16(i))
	}
	id := 0
	step := func() {
		f := frames[id%len(frames)]
		f.FragID = uint32(id)
		s.Decide(nic, f, uint64(id))
		id++
		if len(*freed) > 1024 {
			*freed = (*freed)[:0]
		}
	}
	for range 5000 {
		step()
	}
	if a := testing.AllocsPerRun(2000, step); a > 0.01 {
		t.Fatalf("%.2f allocations per fragment", a)
	}
}

// FuzzFragStore drives the fragment store with a sequence of operations
// (hold a later fragment, decide a first one, sweep) from a few sources
// and datagrams, and checks its invariants after each: the held bytes stay
// within the limits of the store and of every source, and every handle is
// held, taken, freed or expired exactly once.
func FuzzFragStore(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{0x10, 0x11, 0x12, 0x80, 0x10, 0xc0, 0xff})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 4096 {
			return
		}
		tb := newFragTable()
		out := map[uint64]int{}
		tb.configure(fragLimits{total: 6 * 2048, perSource: 3 * 2048, bufSize: 2048,
			free: func(h uint64) { out[h]++ }})
		var fr Frame
		fr.Fragment, fr.Proto, fr.Dst = true, ProtoUDP, MustParseAddr(ipLocal)
		for i, op := range ops {
			fr.Src = MustParseAddr("198.18.1." + itoa(int(op&3)))
			fr.FragID = uint32(op>>2) & 7
			switch op >> 5 {
			case 0, 1, 2, 3: // a later fragment
				h := uint64(i)
				if _, held := tb.follow(&fr, h); !held {
					out[h]++ // not taken: the caller keeps it
				}
			case 4, 5: // its first fragment
				if tb.remember(&fr, Verdict{Action: ActForward}, 0) {
					for _, h := range tb.takeHeld(&fr, nil) {
						out[h]++
					}
				}
			case 6: // a sweep
				tb.sweep(func(h uint64) { out[h]++ })
			case 7: // many sweeps: everything expires
				for range FragTimeoutTicks + 1 {
					tb.sweep(func(h uint64) { out[h]++ })
				}
			}
			if tb.bytes > tb.lim.total || tb.bytes < 0 {
				t.Fatalf("op %d: %d bytes held", i, tb.bytes)
			}
			for a, s := range tb.srcs {
				if s.bytes > tb.lim.perSource || s.bytes <= 0 || s.head == nil {
					t.Fatalf("op %d: source %v holds %d bytes", i, a, s.bytes)
				}
			}
		}
		tb.clear(func(h uint64) { out[h]++ })
		if later := len(ops) - countOthers(ops); len(out) != later {
			t.Fatalf("%d handles came back of %d later fragments", len(out), later)
		}
		for h, n := range out {
			if n != 1 {
				t.Fatalf("handle %d came back %d times", h, n)
			}
		}
		if tb.bytes != 0 || len(tb.m) != 0 || len(tb.srcs) != 0 {
			t.Fatalf("after clear: %d bytes, %d entries, %d sources", tb.bytes, len(tb.m), len(tb.srcs))
		}
	})
}

// countOthers counts the operations that are not later fragments.
func countOthers(ops []byte) int {
	n := 0
	for _, op := range ops {
		if op>>5 >= 4 {
			n++
		}
	}
	return n
}
