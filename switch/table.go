package l4

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// NumShards is the number of shards of a Table.
const NumShards = 256

// Table is the rule table of one switch domain: every rule, registered or
// learned, that says which port owns which traffic.
//
// Concurrency: any number of goroutines may call Lookup at full rate while
// others change the table. A shard is an immutable snapshot (a map and the
// number of rules of each shape) behind an atomic pointer, RCU-style: a
// reader does one atomic load and map reads, takes no lock and writes no
// shared memory, so readers on different cores never slow each other down.
// Writers serialise per shard on a mutex, copy the shard's map, change the
// copy and publish it. The shard is chosen by (local address, protocol,
// local port), so the three lookup steps of a frame read one shard, and a
// write copies only 1/NumShards of the table.
//
// Writes are meant to be rare (attach, AddMatch, a new outgoing
// connection): a write costs a copy of one shard's map. BENCHMARKS.md has
// the numbers.
type Table struct {
	shards [NumShards]shard
	gen    atomic.Uint64 // bumped by every change
	_      [56]byte

	// quotas are read by writers only (Insert, removals: slow paths), so
	// a plain map under a lock is enough; attach and detach stay O(1).
	quotaMu sync.RWMutex
	quotas  map[PortID]*RuleQuota
}

// RuleQuota limits the rules that a group of ports holds together (the
// channels of one endpoint), and through its parent a larger group (all
// endpoints of one user). Table.Insert counts every rule of a port that
// has a quota (SetQuota) and refuses one beyond any limit with
// ErrRuleLimit, the data path's learning included: a limit holds at the
// moment a rule is made, not a scan later. Removals give the room back.
type RuleQuota struct {
	limit   int64
	parent  *RuleQuota
	n       atomic.Int64
	refused atomic.Uint64
}

// NewRuleQuota returns a quota of limit rules (at least 1) inside parent
// (nil: none).
func NewRuleQuota(limit int, parent *RuleQuota) *RuleQuota {
	return &RuleQuota{limit: int64(max(limit, 1)), parent: parent}
}

// Len returns the number of rules counted.
func (q *RuleQuota) Len() int { return int(q.n.Load()) }

// Limit returns the limit.
func (q *RuleQuota) Limit() int { return int(q.limit) }

// Refused returns how many rules this quota refused (itself, not its parent).
func (q *RuleQuota) Refused() uint64 { return q.refused.Load() }

// take counts one rule at every level, or none and reports false.
func (q *RuleQuota) take() bool {
	for l := q; l != nil; l = l.parent {
		if l.n.Add(1) > l.limit {
			l.n.Add(-1)
			l.refused.Add(1)
			for u := q; u != l; u = u.parent {
				u.n.Add(-1)
			}
			return false
		}
	}
	return true
}

func (q *RuleQuota) give(n int64) {
	for l := q; l != nil; l = l.parent {
		l.n.Add(-n)
	}
}

// ErrRuleLimit is returned by Insert when the owner's RuleQuota (or its
// parent's) is full.
var ErrRuleLimit = errors.New("rule limit reached")

// SetQuota makes the rules of port count against q (nil: no quota). Set it
// before the port holds rules, and remove it after the port's rules went.
func (t *Table) SetQuota(port PortID, q *RuleQuota) {
	t.quotaMu.Lock()
	defer t.quotaMu.Unlock()
	if q == nil {
		delete(t.quotas, port)
		return
	}
	if t.quotas == nil {
		t.quotas = map[PortID]*RuleQuota{}
	}
	t.quotas[port] = q
}

func (t *Table) quotaOf(port PortID) *RuleQuota {
	t.quotaMu.RLock()
	defer t.quotaMu.RUnlock()
	return t.quotas[port]
}

type shard struct {
	snap atomic.Pointer[snapshot]
	mu   sync.Mutex
	_    [48]byte // a shard per cache line: writers of one shard do not disturb readers of its neighbours
}

// entry is a rule's value, packed into 8 bytes so that a slot of the
// snapshot (Key and entry) is 48 bytes.
type entry struct {
	port   PortID
	okind  PortKind
	kind   RuleKind
	sticky bool
	used   bool // the slot holds a rule
}

func newEntry(r Rule) entry {
	return entry{port: r.Owner.Port, okind: r.Owner.Kind, kind: r.Kind, sticky: r.Sticky, used: true}
}

func (e entry) owner() Owner { return Owner{Port: e.port, Kind: e.okind} }

// NewTable returns an empty table.
func NewTable() *Table {
	t := &Table{}
	for i := range t.shards {
		t.shards[i].snap.Store(emptySnapshot)
	}
	return t
}

// shardOf picks the shard of a key from its local address, protocol and
// local port: the fields every lookup step shares.
func shardOf(local *Addr, proto uint8, lport uint16) int {
	hi, lo := local.halves()
	h := hi ^ lo*0x9e3779b97f4a7c15 ^ uint64(proto)<<16 ^ uint64(lport)
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 32
	return int(h & (NumShards - 1))
}

func (t *Table) shardFor(k *Key) *shard {
	return &t.shards[shardOf(&k.Local, k.Proto, k.LocalPort)]
}

// Lookup finds the rule that owns a packet arriving at local (address and
// port) from remote, in three steps: the exact 5-tuple, then (local address,
// protocol, local port, remote address), then the listening rule (local
// address, protocol, local port). For protocols without ports the ports are
// ignored and the steps are (local, protocol, remote) then (local,
// protocol). It takes no lock and does not allocate.
func (t *Table) Lookup(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) (Rule, bool) {
	k, e, ok := t.lookup(local, lport, remote, rport, proto)
	if !ok {
		return Rule{}, false
	}
	return e.rule(k), true
}

// LookupOwner is Lookup for the data path: it returns only the owner.
func (t *Table) LookupOwner(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) (Owner, bool) {
	_, e, ok := t.lookup(local, lport, remote, rport, proto)
	return e.owner(), ok
}

func (t *Table) lookup(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) (Key, entry, bool) {
	ported := HasPorts(proto)
	if !ported {
		lport, rport = 0, 0
	}
	s := t.shards[shardOf(&local, proto, lport)].snap.Load()
	k := Key{Local: local, Proto: proto, LocalPort: lport}
	if !s.mayHaveRemote(lport) {
		k.Flags = KeyLocalPort
		if !ported {
			k.Flags = 0
		}
		e, ok := s.get(&k)
		return k, e, ok
	}
	k.Remote, k.RemotePort = remote, rport
	if ported {
		k.Flags = KeyLocalPort | KeyRemote | KeyRemotePort
		if e, ok := s.get(&k); ok {
			return k, e, true
		}
		k.RemotePort, k.Flags = 0, KeyLocalPort|KeyRemote
	} else {
		k.Flags = KeyRemote
	}
	if e, ok := s.get(&k); ok {
		return k, e, true
	}
	k.Remote, k.Flags = Addr{}, k.Flags&^KeyRemote
	e, ok := s.get(&k)
	return k, e, ok
}

// Get returns the rule with exactly the key k.
func (t *Table) Get(k Key) (Rule, bool) {
	e, ok := t.get(k)
	return e.rule(k), ok
}

func (t *Table) get(k Key) (entry, bool) { return t.shardFor(&k).snap.Load().get(&k) }

func (e entry) rule(k Key) Rule {
	return Rule{Key: k, Owner: e.owner(), Kind: e.kind, Sticky: e.sticky}
}

// ErrExists is returned (wrapped in a *ExistsError) by Insert when a rule
// with the same key is held already.
var ErrExists = errors.New("rule exists")

// ExistsError says who holds the key that Insert was asked to take.
type ExistsError struct{ Held Rule }

func (e *ExistsError) Error() string { return fmt.Sprintf("rule exists: %v", e.Held) }
func (e *ExistsError) Unwrap() error { return ErrExists }

// Insert adds r. It never replaces a rule: when the key is held already,
// by anyone, it returns an *ExistsError that errors.Is ErrExists.
func (t *Table) Insert(r Rule) error {
	if err := r.Key.Validate(); err != nil {
		return fmt.Errorf("rule %v: %w", r.Key, err)
	}
	sh := t.shardFor(&r.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.snap.Load()
	if e, ok := old.get(&r.Key); ok {
		return &ExistsError{Held: e.rule(r.Key)}
	}
	if q := t.quotaOf(r.Owner.Port); q != nil && !q.take() {
		return fmt.Errorf("rule %v: %w (%d)", r.Key, ErrRuleLimit, q.limit)
	}
	sh.snap.Store(old.with(r.Key, newEntry(r)))
	t.gen.Add(1)
	return nil
}

// Remove deletes the rule with key k if owner holds it, and reports whether
// it did.
func (t *Table) Remove(k Key, owner PortID) bool {
	return t.removeIn(t.shardFor(&k), func(rk Key, e entry) bool {
		return rk == k && e.port == owner
	}, true) > 0
}

// RemoveOwner deletes every rule that port holds and returns how many.
func (t *Table) RemoveOwner(port PortID) int {
	return t.RemoveIf(func(r Rule) bool { return r.Owner.Port == port })
}

// RemoveIf deletes every rule for which drop returns true and returns how
// many. drop is called with shard locks held: it must not call back into t.
func (t *Table) RemoveIf(drop func(Rule) bool) int {
	n := 0
	for i := range t.shards {
		n += t.removeIn(&t.shards[i], func(k Key, e entry) bool { return drop(e.rule(k)) }, false)
	}
	return n
}

func (t *Table) removeIn(sh *shard, drop func(Key, entry) bool, one bool) int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	done := false
	var gone []*RuleQuota
	n, removed := sh.snap.Load().without(func(k *Key, e entry) bool {
		if done || !drop(*k, e) {
			return false
		}
		done = one
		if q := t.quotaOf(e.port); q != nil {
			gone = append(gone, q)
		}
		return true
	})
	if removed > 0 {
		sh.snap.Store(n)
		t.gen.Add(1)
		for _, q := range gone {
			q.give(1)
		}
	}
	return removed
}

// Rules returns every rule, sorted by owner, then by key. It sees each
// shard at one instant, not the whole table.
func (t *Table) Rules() []Rule {
	var rs []Rule
	for i := range t.shards {
		t.shards[i].snap.Load().each(func(k *Key, e entry) { rs = append(rs, e.rule(*k)) })
	}
	slices.SortFunc(rs, compareRules)
	return rs
}

func compareRules(a, b Rule) int {
	if a.Owner.Port != b.Owner.Port {
		return cmpInt(a.Owner.Port, b.Owner.Port)
	}
	if c := slices.Compare(a.Local[:], b.Local[:]); c != 0 {
		return c
	}
	if a.Proto != b.Proto {
		return cmpInt(a.Proto, b.Proto)
	}
	if a.LocalPort != b.LocalPort {
		return cmpInt(a.LocalPort, b.LocalPort)
	}
	if a.Flags != b.Flags {
		return cmpInt(a.Flags, b.Flags)
	}
	if c := slices.Compare(a.Remote[:], b.Remote[:]); c != 0 {
		return c
	}
	return cmpInt(a.RemotePort, b.RemotePort)
}

func cmpInt[T ~uint8 | ~uint16 | ~uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Len returns the number of rules.
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		n += t.shards[i].snap.Load().n
	}
	return n
}

// Count returns the number of rules per kind (registered, learned).
func (t *Table) Count() (registered, learned int) {
	for i := range t.shards {
		s := t.shards[i].snap.Load()
		s.each(func(_ *Key, e entry) {
			if e.kind == Learned {
				learned++
			}
		})
		registered += s.n
	}
	registered -= learned
	return
}

// Gen returns a number that changes whenever a rule is added or removed.
func (t *Table) Gen() uint64 { return t.gen.Load() }
