package l4

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

var (
	kernel = Owner{Port: 1, Kind: PortKernel}
	epA    = Owner{Port: 10, Kind: PortEndpoint}
	epB    = Owner{Port: 11, Kind: PortEndpoint}
	nic    = Owner{Port: 100, Kind: PortNIC}
)

func reg(k Key, o Owner) Rule { return Rule{Key: k, Owner: o, Kind: Registered} }

func TestLookupOrder(t *testing.T) {
	local, r1, r2 := MustParseAddr(ipLocal), MustParseAddr(ipRemote), MustParseAddr("198.18.1.3")
	tb := NewTable()
	must(t, tb.Insert(reg(ListenKey(local, ProtoTCP, 22), kernel)))
	// DEBUG_PORTS eth0:TCP:2222:198.18.1.3 — a remote IP without a remote
	// port, which the original's two-step lookup never matched.
	must(t, tb.Insert(reg(Key{Local: local, Proto: ProtoTCP, LocalPort: 2222, Remote: r2, Flags: KeyLocalPort | KeyRemote}, kernel)))
	must(t, tb.Insert(reg(ListenKey(local, ProtoTCP, 80), epA)))
	must(t, tb.Insert(Rule{Key: FlowKey(local, 80, r1, 5555, ProtoTCP), Owner: epB, Kind: Learned}))
	must(t, tb.Insert(reg(ListenKey(local, ProtoICMP, 0), kernel)))
	must(t, tb.Insert(Rule{Key: FlowKey(local, 0, r2, 0, ProtoICMP), Owner: epA, Kind: Learned}))

	tests := []struct {
		name         string
		lport, rport uint16
		remote       Addr
		proto        uint8
		want         Owner
		ok           bool
	}{
		{"listening rule", 22, 1234, r1, ProtoTCP, kernel, true},
		{"other port has no rule", 23, 1234, r1, ProtoTCP, Owner{}, false},
		{"other protocol has no rule", 22, 1234, r1, ProtoUDP, Owner{}, false},
		{"remote-ip rule matches its remote", 2222, 999, r2, ProtoTCP, kernel, true},
		{"remote-ip rule ignores other remotes", 2222, 999, r1, ProtoTCP, Owner{}, false},
		{"exact rule wins over listening rule", 80, 5555, r1, ProtoTCP, epB, true},
		{"listening rule for other remote ports", 80, 5556, r1, ProtoTCP, epA, true},
		{"icmp matches the portless rule", 0, 0, r1, ProtoICMP, kernel, true},
		{"icmp with remote rule wins", 0, 0, r2, ProtoICMP, epA, true},
		{"ports are ignored for icmp", 7, 9, r2, ProtoICMP, epA, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := tb.Lookup(local, tc.lport, tc.remote, tc.rport, tc.proto)
			if ok != tc.ok || r.Owner != tc.want {
				t.Fatalf("Lookup = %v, %v; want owner %v, %v", r, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestLookupIPv6(t *testing.T) {
	tb := NewTable()
	l6 := MustParseAddr(ip6Local)
	must(t, tb.Insert(reg(ListenKey(l6, ProtoUDP, 53), epA)))
	if r, ok := tb.Lookup(l6, 53, MustParseAddr(ip6Remote), 3333, ProtoUDP); !ok || r.Owner != epA {
		t.Fatalf("Lookup = %v %v", r, ok)
	}
	// The same port on the IPv4 address is another rule.
	if _, ok := tb.Lookup(MustParseAddr(ipLocal), 53, MustParseAddr(ipRemote), 3333, ProtoUDP); ok {
		t.Fatal("IPv6 rule matched IPv4")
	}
}

func TestInsertNeverReplaces(t *testing.T) {
	tb := NewTable()
	k := ListenKey(MustParseAddr(ipLocal), ProtoTCP, 80)
	must(t, tb.Insert(reg(k, epA)))
	err := tb.Insert(Rule{Key: k, Owner: epB, Kind: Learned})
	var ee *ExistsError
	if !errors.Is(err, ErrExists) || !errors.As(err, &ee) || ee.Held.Owner != epA {
		t.Fatalf("Insert over a held key: %v", err)
	}
	if r, _ := tb.Get(k); r.Owner != epA {
		t.Fatalf("rule replaced: %v", r)
	}
}

func TestInsertValidates(t *testing.T) {
	l := MustParseAddr(ipLocal)
	for _, tc := range []struct {
		k    Key
		want error
	}{
		{Key{Proto: ProtoTCP, LocalPort: 1, Flags: KeyLocalPort}, ErrNoLocal},
		{Key{Local: l, Proto: ProtoTCP}, ErrPortRequired},
		{Key{Local: l, Proto: ProtoICMP, LocalPort: 1, Flags: KeyLocalPort}, ErrPortNotAllowed},
		{Key{Local: l, Proto: ProtoTCP, LocalPort: 1, RemotePort: 2, Flags: KeyLocalPort | KeyRemotePort}, ErrRemotePort},
		{Key{Local: l, Proto: ProtoTCP, LocalPort: 1, Remote: MustParseAddr(ip6Remote), Flags: KeyLocalPort | KeyRemote}, ErrFamilyMismatch},
	} {
		if err := NewTable().Insert(reg(tc.k, epA)); !errors.Is(err, tc.want) {
			t.Errorf("Insert(%v) = %v, want %v", tc.k, err, tc.want)
		}
	}
}

func TestRemove(t *testing.T) {
	tb := NewTable()
	l := MustParseAddr(ipLocal)
	for p := uint16(1); p <= 100; p++ {
		o := epA
		if p%2 == 0 {
			o = epB
		}
		must(t, tb.Insert(reg(ListenKey(l, ProtoUDP, p), o)))
	}
	if tb.Remove(ListenKey(l, ProtoUDP, 2), epA.Port) {
		t.Fatal("a port removed a rule it does not own")
	}
	if !tb.Remove(ListenKey(l, ProtoUDP, 2), epB.Port) {
		t.Fatal("owner could not remove its rule")
	}
	if n := tb.RemoveOwner(epA.Port); n != 50 {
		t.Fatalf("RemoveOwner = %d, want 50", n)
	}
	if tb.Len() != 49 {
		t.Fatalf("Len = %d, want 49", tb.Len())
	}
	for _, r := range tb.Rules() {
		if r.Owner != epB {
			t.Fatalf("left: %v", r)
		}
	}
	reg, learned := tb.Count()
	if reg != 49 || learned != 0 {
		t.Fatalf("Count = %d, %d", reg, learned)
	}
	// After removal the shape counters still let lookups find what is left.
	if _, ok := tb.Lookup(l, 4, MustParseAddr(ipRemote), 1, ProtoUDP); !ok {
		t.Fatal("remaining rule not found")
	}
}

// TestTableConcurrent runs readers against writers; -race checks the
// snapshot discipline, and every reader must always see the rules that
// no writer touches.
func TestTableConcurrent(t *testing.T) {
	tb := NewTable()
	l, r := MustParseAddr(ipLocal), MustParseAddr(ipRemote)
	for p := uint16(1); p <= 64; p++ {
		must(t, tb.Insert(reg(ListenKey(l, ProtoTCP, p), epA)))
	}
	var wg, writers sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := uint16(i%64 + 1)
				if res, ok := tb.Lookup(l, p, r, 1000, ProtoTCP); !ok || res.Owner != epA {
					errs <- fmt.Errorf("stable rule %d lost: %v %v", p, res, ok)
					return
				}
			}
		})
	}
	for w := range 2 {
		writers.Go(func() {
			o := Owner{Port: PortID(20 + w), Kind: PortEndpoint}
			for i := range 2000 {
				k := FlowKey(l, uint16(1000+i), r, uint16(w), ProtoTCP)
				if err := tb.Insert(Rule{Key: k, Owner: o, Kind: Learned}); err != nil {
					errs <- err
					return
				}
				if i%3 == 0 && !tb.Remove(k, o.Port) {
					errs <- fmt.Errorf("remove %v failed", k)
					return
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := tb.Len(); n != 64+2*1333 {
		t.Fatalf("Len = %d", n)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
