package l4

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// model is the reference the Table is checked against: a plain map under
// a mutex, with the lookup steps written out as the doc comment of
// Table.Lookup states them.
type model struct {
	mu sync.Mutex
	m  map[Key]Rule
}

func newModel() *model { return &model{m: map[Key]Rule{}} }

func (m *model) insert(r Rule) error {
	if err := r.Key.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.m[r.Key]; ok {
		return ErrExists
	}
	m.m[r.Key] = r
	return nil
}

func (m *model) remove(k Key, owner PortID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.m[k]; ok && r.Owner.Port == owner {
		delete(m.m, k)
		return true
	}
	return false
}

func (m *model) removeIf(drop func(Rule) bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, r := range m.m {
		if drop(r) {
			delete(m.m, k)
			n++
		}
	}
	return n
}

func (m *model) lookup(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) (Rule, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !HasPorts(proto) {
		for _, k := range []Key{
			{Local: local, Proto: proto, Remote: remote, Flags: KeyRemote},
			{Local: local, Proto: proto},
		} {
			if r, ok := m.m[k]; ok {
				return r, true
			}
		}
		return Rule{}, false
	}
	for _, k := range []Key{
		{Local: local, Proto: proto, LocalPort: lport, Remote: remote, RemotePort: rport, Flags: KeyLocalPort | KeyRemote | KeyRemotePort},
		{Local: local, Proto: proto, LocalPort: lport, Remote: remote, Flags: KeyLocalPort | KeyRemote},
		{Local: local, Proto: proto, LocalPort: lport, Flags: KeyLocalPort},
	} {
		if r, ok := m.m[k]; ok {
			return r, true
		}
	}
	return Rule{}, false
}

func (m *model) rules() []Rule {
	m.mu.Lock()
	defer m.mu.Unlock()
	rs := make([]Rule, 0, len(m.m))
	for _, r := range m.m {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, compareRules)
	return rs
}

// opSource hands out the fields of random operations: from a fuzzer's
// bytes, or from a seeded generator.
type opSource interface {
	byte() byte
	more() bool
}

type bytesSource struct {
	b []byte
	i int
}

func (s *bytesSource) more() bool { return s.i < len(s.b) }
func (s *bytesSource) byte() byte {
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

type randSource struct {
	r *rand.Rand
	n int
}

func (s *randSource) more() bool { s.n--; return s.n >= 0 }
func (s *randSource) byte() byte { return byte(s.r.Uint32()) }

// The universe of the operations: few values of each field, so that keys
// collide, rules shadow each other and lookups hit every step.
var (
	modelLocals  = []Addr{MustParseAddr("198.18.0.1"), MustParseAddr("198.18.0.2"), MustParseAddr("2001:db8::1")}
	modelRemotes = []Addr{MustParseAddr("198.19.0.1"), MustParseAddr("198.19.0.2"), MustParseAddr("2001:db8::2"), MustParseAddr("2001:db8::3")}
	modelProtos  = []uint8{ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6}
)

func pick[T any](s opSource, xs []T) T { return xs[int(s.byte())%len(xs)] }

// randKey returns a key of any shape, valid or not.
func randKey(s opSource) Key {
	b := s.byte()
	k := Key{Local: pick(s, modelLocals), Proto: pick(s, modelProtos), Flags: b & 7}
	if b&8 != 0 {
		k.Local = Addr{} // invalid: no local address
	}
	if k.Flags&KeyLocalPort != 0 {
		k.LocalPort = uint16(s.byte() % 8)
	}
	if k.Flags&KeyRemote != 0 {
		k.Remote = pick(s, modelRemotes)
	}
	if k.Flags&KeyRemotePort != 0 {
		k.RemotePort = uint16(s.byte() % 8)
	}
	return k
}

// runModel applies the operations of s to t and to a model and fails at
// the first difference.
func runModel(t *testing.T, tb *Table, s opSource) {
	m := newModel()
	owners := []Owner{epA, epB, kernel, nic}
	for step := 0; s.more(); step++ {
		switch op := s.byte() % 8; op {
		case 0, 1, 2: // insert
			r := Rule{Key: randKey(s), Owner: pick(s, owners), Kind: Registered}
			if s.byte()&1 == 0 {
				r.Kind = Learned
			}
			werr := m.insert(r)
			err := tb.Insert(r)
			if (werr == nil) != (err == nil) || errors.Is(werr, ErrExists) != errors.Is(err, ErrExists) {
				t.Fatalf("step %d: Insert(%v) = %v, model %v", step, r, err, werr)
			}
		case 3: // remove
			k, o := randKey(s), pick(s, owners).Port
			if got, want := tb.Remove(k, o), m.remove(k, o); got != want {
				t.Fatalf("step %d: Remove(%v, %d) = %v, model %v", step, k, o, got, want)
			}
		case 4: // remove owner, or a predicate
			o := pick(s, owners).Port
			if s.byte()&1 == 0 {
				if got, want := tb.RemoveOwner(o), m.removeIf(func(r Rule) bool { return r.Owner.Port == o }); got != want {
					t.Fatalf("step %d: RemoveOwner(%d) = %d, model %d", step, o, got, want)
				}
			} else {
				lp := uint16(s.byte() % 8)
				drop := func(r Rule) bool { return r.LocalPort == lp && r.Kind == Learned }
				if got, want := tb.RemoveIf(drop), m.removeIf(drop); got != want {
					t.Fatalf("step %d: RemoveIf(port %d) = %d, model %d", step, lp, got, want)
				}
			}
		default: // lookups and reads
			l, r, p := pick(s, modelLocals), pick(s, modelRemotes), pick(s, modelProtos)
			lp, rp := uint16(s.byte()%8), uint16(s.byte()%8)
			want, wok := m.lookup(l, lp, r, rp, p)
			got, ok := tb.Lookup(l, lp, r, rp, p)
			if ok != wok || got != want {
				t.Fatalf("step %d: Lookup(%v:%d <- %v:%d %s) = %v %v, model %v %v", step, l, lp, r, rp, ProtoName(p), got, ok, want, wok)
			}
			o, ok := tb.LookupOwner(l, lp, r, rp, p)
			if ok != wok || o != want.Owner {
				t.Fatalf("step %d: LookupOwner = %v %v, model %v %v", step, o, ok, want.Owner, wok)
			}
			k := randKey(s)
			g, gok := tb.Get(k)
			m.mu.Lock()
			w, wok2 := m.m[k]
			m.mu.Unlock()
			if gok != wok2 || gok && g != w {
				t.Fatalf("step %d: Get(%v) = %v %v, model %v %v", step, k, g, gok, w, wok2)
			}
		}
	}
	checkAll(t, tb, m)
}

// checkAll compares everything the table reports about itself with m.
func checkAll(t *testing.T, tb *Table, m *model) {
	t.Helper()
	want := m.rules()
	if got := tb.Rules(); !slices.Equal(got, want) {
		t.Fatalf("Rules:\n got %v\nwant %v", got, want)
	}
	if tb.Len() != len(want) {
		t.Fatalf("Len = %d, model %d", tb.Len(), len(want))
	}
	learned := 0
	for _, r := range want {
		if r.Kind == Learned {
			learned++
		}
		if g, ok := tb.Get(r.Key); !ok || g != r {
			t.Fatalf("Get(%v) = %v %v", r.Key, g, ok)
		}
	}
	if reg, l := tb.Count(); reg != len(want)-learned || l != learned {
		t.Fatalf("Count = %d, %d; model %d, %d", reg, l, len(want)-learned, learned)
	}
	n := 0
	tb.Each(func(Rule) { n++ })
	if n != len(want) {
		t.Fatalf("Each saw %d rules, model %d", n, len(want))
	}
}

// TestTableModel runs random operations against the table and the
// reference model, on tables that start with 1, 4 and 512 buckets (the
// small ones resize many times).
func TestTableModel(t *testing.T) {
	for _, nb := range []int{1, 4, minBuckets} {
		for seed := range uint64(20) {
			t.Run(fmt.Sprintf("buckets=%d/seed=%d", nb, seed), func(t *testing.T) {
				runModel(t, newTable(nb), &randSource{r: rand.New(rand.NewPCG(seed, uint64(nb))), n: 3000})
			})
		}
	}
}

// FuzzTable is TestTableModel with the fuzzer choosing the operations;
// a first byte with its top bit set makes the IPv4 hash constant.
func FuzzTable(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13})
	f.Add([]byte("\x00\x07\x00\x01\x02\x03\x05\x00\x00\x01\x01\x02\x00"))
	f.Add([]byte("\x80\x00\x07\x00\x01\x02\x03\x05\x00\x00\x01\x01\x02\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tb := newTable(1)
		if len(b) > 0 && b[0]&0x80 != 0 {
			tb.seed[2] = 0 // every IPv4 key in one probe sequence (TestTableModelCollisions)
		}
		runModel(t, tb, &bytesSource{b: b})
	})
}

// TestTableModelConcurrent runs writers, each on its own keys with its own
// model, while readers look up without pause. Readers check what holds
// whatever the timing: a stable rule is always found with its owner; a
// writer's key, when found, has the one owner that writer ever gives it.
// Each writer checks that a rule it removed is gone for a lookup started
// after Remove returned, and one it inserted is there. At the end the
// table equals the union of the models. Run it with -race.
func TestTableModelConcurrent(t *testing.T) {
	tb := newTable(1)
	l4a, l6 := MustParseAddr("198.18.0.1"), MustParseAddr("2001:db8::1")
	stable := Owner{Port: 99, Kind: PortEndpoint}
	must(t, tb.Insert(reg(ListenKey(l4a, ProtoUDP, 53), stable)))
	must(t, tb.Insert(reg(ListenKey(l6, ProtoUDP, 53), stable)))
	const writers = 3
	ownerOf := func(w int) Owner { return Owner{Port: PortID(20 + w), Kind: PortEndpoint} }
	// Writer w's flows: local port 53 (all share it) and remote port
	// 1000*w+i, so that every writer's flows share the listening rule's port.
	remoteOf := func(i int) Addr { return AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}) }
	remote6Of := func(i int) Addr {
		a := MustParseAddr("2001:db8::")
		a[14], a[15] = byte(i>>8), byte(i)
		return a
	}
	var wg, wwg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 16)
	for range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(1, 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				w, i := rng.IntN(writers), rng.IntN(400)
				l, r := l4a, remoteOf(i)
				if i%2 == 1 {
					l, r = l6, remote6Of(i)
				}
				o, ok := tb.LookupOwner(l, 53, r, uint16(1000*w+i), ProtoUDP)
				if !ok || o != ownerOf(w) && o != stable {
					errs <- fmt.Errorf("lookup of writer %d's flow %d: %v %v", w, i, o, ok)
					return
				}
			}
		})
	}
	models := make([]*model, writers)
	for w := range writers {
		models[w] = newModel()
		wwg.Go(func() {
			m, o := models[w], ownerOf(w)
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 4000 {
				i := rng.IntN(400)
				l, r := l4a, remoteOf(i)
				if i%2 == 1 {
					l, r = l6, remote6Of(i)
				}
				k := FlowKey(l, 53, r, uint16(1000*w+i), ProtoUDP)
				if rng.IntN(3) == 0 {
					if got, want := tb.Remove(k, o.Port), m.remove(k, o.Port); got != want {
						errs <- fmt.Errorf("writer %d: Remove(%v) = %v, model %v", w, k, got, want)
						return
					}
					if got, ok := tb.LookupOwner(l, 53, r, k.RemotePort, ProtoUDP); !ok || got != stable {
						errs <- fmt.Errorf("writer %d: after Remove(%v) lookup = %v %v", w, k, got, ok)
						return
					}
					continue
				}
				rule := Rule{Key: k, Owner: o, Kind: Learned}
				err, werr := tb.Insert(rule), m.insert(rule)
				if (err == nil) != (werr == nil) {
					errs <- fmt.Errorf("writer %d: Insert(%v) = %v, model %v", w, k, err, werr)
					return
				}
				if got, ok := tb.LookupOwner(l, 53, r, k.RemotePort, ProtoUDP); !ok || got != o {
					errs <- fmt.Errorf("writer %d: after Insert(%v) lookup = %v %v", w, k, got, ok)
					return
				}
			}
		})
	}
	wwg.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := newModel()
	must(t, all.insert(reg(ListenKey(l4a, ProtoUDP, 53), stable)))
	must(t, all.insert(reg(ListenKey(l6, ProtoUDP, 53), stable)))
	for _, m := range models {
		for k, r := range m.m {
			all.m[k] = r
		}
	}
	checkAll(t, tb, all)
	// RemoveOwner during reads leaves exactly the others' rules.
	for w := range writers {
		if got, want := tb.RemoveOwner(ownerOf(w).Port), len(models[w].m); got != want {
			t.Fatalf("RemoveOwner(%d) = %d, want %d", w, got, want)
		}
	}
	if tb.Len() != 2 {
		t.Fatalf("Len = %d after RemoveOwner of every writer", tb.Len())
	}
}
