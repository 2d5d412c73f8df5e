package l4

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// settled waits until no resize is under way and returns the array.
func (t *ftab) settled() *farray {
	t.resizeMu.Lock()
	defer t.resizeMu.Unlock()
	return t.state.Load().cur
}

// flow4 returns learned flow i of local port lp, owned by o.
func flow4(i int, lp uint16, o Owner) Rule {
	r := AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
	return Rule{Key: FlowKey(MustParseAddr("198.18.0.1"), lp, r, uint16(1000+i>>16), ProtoUDP), Owner: o, Kind: Learned}
}

func lookupRule(tb *Table, r Rule) (Owner, bool) {
	return tb.LookupOwner(r.Local, r.LocalPort, r.Remote, r.RemotePort, r.Proto)
}

// TestTableModelCollisions is TestTableModel with a hash that sends every
// IPv4 key to the same bucket: each key then lives at the end of one long
// probe sequence, and inserts and removals must keep the overflow counts
// along it right for every other key to be found.
func TestTableModelCollisions(t *testing.T) {
	for _, nb := range []int{1, 4, minBuckets} {
		for seed := range uint64(10) {
			t.Run(fmt.Sprintf("buckets=%d/seed=%d", nb, seed), func(t *testing.T) {
				tb := newTable(nb)
				tb.seed[2] = 0 // hash4: mix(x, 0) = 0 for every key
				if c, _ := pack4(&Key{Local: MustParseAddr("198.18.0.1"), Proto: ProtoUDP, Flags: KeyLocalPort, LocalPort: 5}); tb.hash4(&c) != 0 {
					t.Fatal("the hash is not constant")
				}
				runModel(t, tb, &randSource{r: rand.New(rand.NewPCG(seed, 77)), n: 3000})
			})
		}
	}
}

// TestSeqlockRetry stops a writer in the middle of changing a bucket (its
// sequence number odd, the slot half written) and checks that a lookup of
// that slot's key neither returns the half-written slot nor gives up: it
// waits and returns what the writer completes.
func TestSeqlockRetry(t *testing.T) {
	tb := newTable(4)
	r := flow4(1, 53, epA)
	must(t, tb.Insert(r))
	c, _ := pack4(&r.Key)
	a := tb.v4.state.Load().cur
	i, j, ok := a.locate(tb.hash4(&c), &c)
	if !ok {
		t.Fatal("rule not found in its array")
	}
	b := a.bucket(i)
	tb.v4.mu.Lock()
	s := b[0].Load()
	b[0].Store(s + 1) // the writer's odd phase, and the slot half written:
	b[3+3*j].Store(uint64(newEntry(Rule{Key: r.Key, Owner: epB, Kind: Learned})) | usedBit)
	b[1+3*j].Store(0) // its key's first word not yet
	done := make(chan Owner, 1)
	go func() {
		o, ok := lookupRule(tb, r)
		if !ok {
			o = Owner{}
		}
		done <- o
	}()
	select {
	case o := <-done:
		t.Fatalf("a lookup returned %v while the bucket was being written", o)
	case <-time.After(50 * time.Millisecond):
	}
	b[1+3*j].Store(c.a)
	b[0].Store(s + 2)
	tb.v4.mu.Unlock()
	if o := <-done; o != epB {
		t.Fatalf("lookup after the write = %v, want %v", o, epB)
	}
}

// TestResizeSteps drives a resize by hand, chunk by chunk, with inserts
// and removals between the steps and readers running throughout: every
// rule held is found at every step, by readers that loaded the table's
// state before the resize began too, and no removed rule is found by a
// lookup that starts after Remove returned, whichever array held it.
func TestResizeSteps(t *testing.T) {
	tb := newTable(minBuckets)
	v := &tb.v4
	m := map[Rule]bool{} // rule -> held
	n := minBuckets * maxLoadNum / maxLoadDen
	for i := range n {
		r := flow4(i, uint16(i%7), epA)
		must(t, tb.Insert(r))
		m[r] = true
	}
	// Stable rules, looked up by readers during everything below.
	stable := []Rule{flow4(n, 100, epB), flow4(n+1, 100, epB), flow4(n+2, 101, epB)}
	for _, r := range stable {
		must(t, tb.Insert(r))
	}
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, r := range stable {
					if o, ok := lookupRule(tb, r); !ok || o != epB {
						errs <- fmt.Errorf("stable rule %v: %v %v", r.Key, o, ok)
						return
					}
				}
			}
		})
	}
	if !v.resizeMu.TryLock() {
		v.resizeMu.Lock() // the inserts above started a resize: wait it out
	}
	stale := v.state.Load()
	if stale.old != nil {
		t.Fatal("resize under way with resizeMu held")
	}
	from := stale.cur
	before := map[Rule]bool{}
	for r := range m {
		before[r] = true
	}
	check := func(step string) {
		t.Helper()
		for r, held := range m {
			o, ok := lookupRule(tb, r)
			if ok != held || held && o != r.Owner {
				t.Fatalf("%s: %v: lookup %v %v, held %v", step, r.Key, o, ok, held)
			}
			c, _ := pack4(&r.Key)
			h := tb.hash4(&c)
			// A reader still holding the state from before the resize
			// finds the rules held then that are still held.
			if e, ok := stale.cur.get(h, &c); ok != (held && before[r]) || ok && e.owner() != r.Owner {
				t.Fatalf("%s: %v in the old array: %v %v, held %v", step, r.Key, e.owner(), ok, held)
			}
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	next := n + 10
	churn := func() {
		for range 40 {
			r := flow4(next, uint16(next%7), epA)
			next++
			must(t, tb.Insert(r))
			m[r] = true
		}
		k := 0
		for r, held := range m {
			if held && rng.IntN(8) == 0 {
				if !tb.Remove(r.Key, r.Owner.Port) {
					t.Fatalf("Remove(%v) failed", r.Key)
				}
				m[r] = false
				if k++; k == 40 {
					break
				}
			}
		}
	}
	to := v.startGrow(from)
	check("started")
	churn()
	for start := uint64(0); start <= from.mask; start += growChunk / 4 {
		// Copy a quarter chunk at a time: temporarily smaller chunks.
		v.mu.Lock()
		for i := start; i < start+growChunk/4 && i <= from.mask; i++ {
			b := from.bucket(i)
			for j := range slots4 {
				if e := b[3+3*j].Load(); e != 0 {
					k := key4{b[1+3*j].Load(), b[2+3*j].Load()}
					to.place(v.hash(&k), k.a, k.b, e)
				}
			}
		}
		v.mu.Unlock()
		check(fmt.Sprintf("copied to bucket %d", start))
		churn()
		check(fmt.Sprintf("churn after bucket %d", start))
	}
	v.endGrow(to)
	v.resizeMu.Unlock()
	if to.mask != 2*from.mask+1 {
		t.Fatalf("mask %d after growing from %d", to.mask, from.mask)
	}
	// Removals now touch only the new array: check without the stale reader.
	for r, held := range m {
		if held {
			if !tb.Remove(r.Key, r.Owner.Port) {
				t.Fatalf("Remove(%v) after the resize failed", r.Key)
			}
			if _, ok := lookupRule(tb, r); ok {
				t.Fatalf("%v found after Remove", r.Key)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if tb.Len() != len(stable) {
		t.Fatalf("Len = %d, want %d", tb.Len(), len(stable))
	}
}

// TestResizeUnderReaders grows a table from one bucket to 32,768 by
// inserts (each resize on its own goroutine, copying while writers go on)
// and shrinks it back by removals, while readers look up rules that stay
// and rules that come and go: a staying rule is always found, a coming
// and going one, when found, has its one owner.
func TestResizeUnderReaders(t *testing.T) {
	tb := newTable(1)
	stable := []Rule{flow4(0, 9, epB), flow4(1, 9, epB), flow4(2, 10, epB)}
	for _, r := range stable {
		must(t, tb.Insert(r))
	}
	const n = 40000
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, r := range stable {
					if o, ok := lookupRule(tb, r); !ok || o != epB {
						errs <- fmt.Errorf("stable rule %v: %v %v", r.Key, o, ok)
						return
					}
				}
				r := flow4(3+rng.IntN(n), 53, epA)
				if o, ok := lookupRule(tb, r); ok && o != epA {
					errs <- fmt.Errorf("rule %v: owner %v", r.Key, o)
					return
				}
			}
		})
	}
	for i := range n {
		r := flow4(3+i, 53, epA)
		must(t, tb.Insert(r))
		if o, ok := lookupRule(tb, r); !ok || o != epA {
			t.Fatalf("%v after Insert: %v %v", r.Key, o, ok)
		}
	}
	nb := tb.v4.settled().mask + 1
	if nb*maxLoadNum/maxLoadDen < n || nb > 4*n {
		t.Fatalf("%d buckets for %d rules", nb, n)
	}
	for i := range n {
		r := flow4(3+i, 53, epA)
		if !tb.Remove(r.Key, epA.Port) {
			t.Fatalf("Remove(%v) failed", r.Key)
		}
		if _, ok := lookupRule(tb, r); ok {
			t.Fatalf("%v found after Remove", r.Key)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if tb.Len() != len(stable) {
		t.Fatalf("Len = %d", tb.Len())
	}
}

// TestQuotaConcurrent attaches and detaches quotas of other ports while
// writers insert and remove rules of ports whose quotas stay: the
// writers' quotas count exactly their rules throughout, and the copy-on-
// write map loses no port's quota to a concurrent SetQuota. Run it with
// -race.
func TestQuotaConcurrent(t *testing.T) {
	tb := newTable(1)
	const writers, limit = 2, 50
	qs := make([]*RuleQuota, writers)
	for w := range writers {
		qs[w] = NewRuleQuota(limit, nil)
		tb.SetQuota(PortID(100+w), qs[w])
	}
	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := PortID(1000 + i%64)
			tb.SetQuota(p, NewRuleQuota(1, nil))
			tb.SetQuota(p, nil)
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			o := Owner{Port: PortID(100 + w), Kind: PortEndpoint}
			held := 0
			for i := range 3000 {
				r := flow4(i%(2*limit), uint16(200+w), o)
				err := tb.Insert(r)
				switch {
				case err == nil:
					held++
				case errors.Is(err, ErrRuleLimit):
					if held < limit {
						errs <- fmt.Errorf("writer %d: refused at %d rules", w, held)
						return
					}
					if tb.Remove(flow4((i+limit)%(2*limit), uint16(200+w), o).Key, o.Port) {
						held--
					}
				case errors.Is(err, ErrExists):
					if tb.Remove(r.Key, o.Port) {
						held--
					}
				}
				if qs[w].Len() != held {
					errs <- fmt.Errorf("writer %d: quota counts %d, holds %d", w, qs[w].Len(), held)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	churn.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := range writers {
		if tb.RemoveOwner(PortID(100 + w)); qs[w].Len() != 0 {
			t.Fatalf("writer %d: %d left counted after RemoveOwner", w, qs[w].Len())
		}
	}
}
