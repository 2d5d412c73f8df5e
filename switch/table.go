package l4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
)

// Table is the rule table of one switch domain: every rule, registered or
// learned, that says which port owns which traffic.
//
// Layout: one hash table per IP family (hashtab4.go, hashtab.go) holds
// every rule under a compact key that is the whole Key (16 bytes for IPv4:
// both addresses, both ports, protocol and shape). A lookup probes it at most three times,
// one per lookup step, and skips a step that no rule can answer: the exact
// step when no exact rule has the frame's local port (a per-port count),
// the remote-address step when there is no such rule at all. A frame to a
// listening port that has no exact rules thus costs one probe, and so does
// a frame of a learned flow. The per-port counts take 256 KB per table.
// An RX worker looks up a NIC's receive batch in one go (batch.go).
//
// Concurrency: any number of goroutines may call Lookup at full rate while
// others change the table. Readers take no lock and write no shared
// memory. An IPv4 probe (hashtab4.go) is an atomic load of the table's
// state and a read of one 64-byte bucket (two rules) under the bucket's
// sequence number, retried if a writer changed the bucket meanwhile; the
// bucket array holds no pointer. Writers of IPv4 rules hold one lock per
// table for a few hundred nanoseconds: they change one bucket (and the
// overflow counts of the few before it); the table grows by a goroutine
// that copies the old array in chunks while readers read both. IPv6 rules
// (hashtab.go) sit in immutable buckets of up to 8 rules that writers copy
// under one of 512 stripe locks. A write therefore costs the same however
// many rules share its local port and however many the table holds: the
// data path may learn a flow per frame. BENCHMARKS.md has the numbers.
//
// Once Insert or Remove has returned, every lookup that starts afterwards
// sees the change.
type Table struct {
	v4   ftab
	v6   htab[key6]
	seed [4]uint64
	_    [64]byte

	// Read by every lookup, written only when a non-exact rule comes or
	// goes: rules per Key.Flags value, exact ones not counted.
	shapes [8]atomic.Int32
	_      [32]byte
	// exact counts the exact rules (remote address and port; for
	// protocols without ports, remote address) per local port, whatever
	// the local address or protocol. A lookup skips the exact step when
	// its local port has none, e.g. a server's listening port. A count is
	// raised before its rule is published and lowered after it is gone.
	exact [1 << 16]atomic.Uint32

	gen     atomic.Uint64 // bumped by every change
	learned atomic.Int64

	// quotas maps a port to its RuleQuota. Insert reads it for every new
	// rule, learned flows on the data path included: one atomic load of an
	// immutable map, no lock, nothing written. SetQuota (attach and detach
	// of a port: the control plane) copies the map under quotaMu.
	quotaMu sync.Mutex
	quotas  atomic.Pointer[map[PortID]*RuleQuota]
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
	var m map[PortID]*RuleQuota
	if p := t.quotas.Load(); p != nil {
		m = make(map[PortID]*RuleQuota, len(*p)+1)
		for k, v := range *p {
			m[k] = v
		}
	} else {
		m = map[PortID]*RuleQuota{}
	}
	if q == nil {
		delete(m, port)
	} else {
		m[port] = q
	}
	t.quotas.Store(&m)
}

func (t *Table) quotaOf(port PortID) *RuleQuota {
	if p := t.quotas.Load(); p != nil {
		return (*p)[port]
	}
	return nil
}

// entry is a rule's value packed into one word: the owner's port in bits
// 0-31, its kind in 32-39, the rule's kind in 40-47, sticky in bit 48. One
// word travels in one register: a struct of five small fields was spilled
// to the stack byte by byte and read back as a word on every lookup, a
// store-forwarding stall that cost more than the probe.
type entry uint64

func newEntry(r Rule) entry {
	e := entry(r.Owner.Port) | entry(r.Owner.Kind)<<32 | entry(r.Kind)<<40
	if r.Sticky {
		e |= 1 << 48
	}
	if r.Watched {
		e |= 1 << 49
	}
	return e
}

func (e entry) port() PortID   { return PortID(e) }
func (e entry) kind() RuleKind { return RuleKind(e >> 40) }
func (e entry) sticky() bool   { return e&(1<<48) != 0 }
func (e entry) watched() bool  { return e&(1<<49) != 0 }
func (e entry) owner() Owner   { return Owner{Port: PortID(e), Kind: PortKind(e >> 32)} }

// NewTable returns an empty table.
func NewTable() *Table { return newTable(minBuckets) }

// newTable returns an empty table whose hash tables start with n buckets
// (tests start small, so that they resize).
func newTable(n int) *Table {
	t := &Table{}
	for i := range t.seed {
		t.seed[i] = rand.Uint64() | 1 // per table: remote senders cannot aim at one bucket
	}
	t.v4.init(t.hash4, n)
	t.v6.init(t.hash6, n)
	return t
}

// exactShape reports whether flags is the shape of the first lookup step:
// remote address and port, or for protocols without ports remote address.
func exactShape(flags uint8) bool {
	return flags == KeyLocalPort|KeyRemote|KeyRemotePort || flags == KeyRemote
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

// lookup is Lookup returning the key found and its entry.
func (t *Table) lookup(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) (Key, entry, bool) {
	e, fl, ok := t.find(&local, lport, &remote, rport, proto)
	if !ok {
		return Key{}, 0, false
	}
	k := Key{Local: local, Proto: proto, Flags: fl}
	if fl&KeyLocalPort != 0 {
		k.LocalPort = lport
	}
	if fl&KeyRemote != 0 {
		k.Remote = remote
	}
	if fl&KeyRemotePort != 0 {
		k.RemotePort = rport
	}
	return k, e, true
}

// LookupOwner is Lookup for the data path: it returns only the owner.
func (t *Table) LookupOwner(local Addr, lport uint16, remote Addr, rport uint16, proto uint8) (Owner, bool) {
	e, _, ok := t.find(&local, lport, &remote, rport, proto)
	return e.owner(), ok
}

// find does the lookup steps and returns the entry found and the shape of
// its key.
func (t *Table) find(local *Addr, lport uint16, remote *Addr, rport uint16, proto uint8) (entry, uint8, bool) {
	lf, xf := uint8(KeyLocalPort), KeyLocalPort|KeyRemote|KeyRemotePort
	if !HasPorts(proto) {
		lport, rport = 0, 0
		lf, xf = 0, KeyRemote
	}
	if local.Is4() {
		l := uint64(binary.BigEndian.Uint32(local[12:])) << 32
		pb := uint64(proto)<<32 | uint64(lport)<<16
		if remote.Is4() {
			r := uint64(binary.BigEndian.Uint32(remote[12:]))
			if t.exact[lport].Load() != 0 {
				k := key4{l | r, uint64(xf)<<40 | pb | uint64(rport)}
				if e, ok := t.v4.get(t.hash4(&k), &k); ok {
					return e, xf, true
				}
			}
			if lf != 0 && t.shapes[KeyLocalPort|KeyRemote].Load() != 0 {
				k := key4{l | r, uint64(KeyLocalPort|KeyRemote)<<40 | pb}
				if e, ok := t.v4.get(t.hash4(&k), &k); ok {
					return e, KeyLocalPort | KeyRemote, true
				}
			}
		}
		if t.shapes[lf].Load() != 0 {
			k := key4{l, uint64(lf)<<40 | pb}
			if e, ok := t.v4.get(t.hash4(&k), &k); ok {
				return e, lf, true
			}
		}
		return 0, 0, false
	}
	l0, l1 := local.halves()
	pb := uint64(proto)<<32 | uint64(lport)<<16
	if !remote.Is4() {
		r0, r1 := remote.halves()
		if t.exact[lport].Load() != 0 {
			k := key6{l0, l1, r0, r1, uint64(xf)<<40 | pb | uint64(rport)}
			if e, ok := t.v6.get(t.hash6(&k), &k); ok {
				return e, xf, true
			}
		}
		if lf != 0 && t.shapes[KeyLocalPort|KeyRemote].Load() != 0 {
			k := key6{l0, l1, r0, r1, uint64(KeyLocalPort|KeyRemote)<<40 | pb}
			if e, ok := t.v6.get(t.hash6(&k), &k); ok {
				return e, KeyLocalPort | KeyRemote, true
			}
		}
	}
	if t.shapes[lf].Load() != 0 {
		k := key6{l0, l1, 0, 0, uint64(lf)<<40 | pb}
		if e, ok := t.v6.get(t.hash6(&k), &k); ok {
			return e, lf, true
		}
	}
	return 0, 0, false
}

// Get returns the rule with exactly the key k.
func (t *Table) Get(k Key) (Rule, bool) {
	e, ok := t.get(k)
	return e.rule(k), ok
}

func (t *Table) get(k Key) (entry, bool) {
	if k.Local.Is4() {
		c, ok := pack4(&k)
		if !ok {
			return 0, false
		}
		return t.v4.get(t.hash4(&c), &c)
	}
	c, ok := pack6(&k)
	if !ok {
		return 0, false
	}
	return t.v6.get(t.hash6(&c), &c)
}

func (e entry) rule(k Key) Rule {
	return Rule{Key: k, Owner: e.owner(), Kind: e.kind(), Sticky: e.sticky(), Watched: e.watched()}
}

// ErrExists is returned (wrapped in a *ExistsError) by Insert when a rule
// with the same key is held already.
var ErrExists = errors.New("rule exists")

// ExistsError says who holds the key that Insert was asked to take.
type ExistsError struct{ Held Rule }

func (e *ExistsError) Error() string { return fmt.Sprintf("rule exists: %v", e.Held) }
func (e *ExistsError) Unwrap() error { return ErrExists }

// Insert adds r. It never replaces a rule: when the key is held already,
// by anyone, it returns an *ExistsError that errors.Is ErrExists. Its cost
// does not depend on the size of the table.
func (t *Table) Insert(r Rule) error {
	if err := r.Key.Validate(); err != nil {
		return fmt.Errorf("rule %v: %w", r.Key, err)
	}
	// The owner's quota first: a limit holds at the moment a rule is made.
	q := t.quotaOf(r.Owner.Port)
	if q != nil && !q.take() {
		return fmt.Errorf("rule %v: %w (%d)", r.Key, ErrRuleLimit, q.limit)
	}
	// The count goes up before the rule is visible, so that no lookup
	// skips a step that has a rule.
	t.count(&r.Key, 1)
	var held entry
	var ok bool
	if r.Local.Is4() {
		k, _ := pack4(&r.Key)
		held, ok = t.v4.insert(t.hash4(&k), k, newEntry(r))
	} else {
		k, _ := pack6(&r.Key)
		held, ok = t.v6.insert(t.hash6(&k), k, newEntry(r))
	}
	if !ok {
		t.count(&r.Key, -1)
		if q != nil {
			q.give(1)
		}
		return &ExistsError{Held: held.rule(r.Key)}
	}
	if r.Kind == Learned {
		t.learned.Add(1)
	}
	t.gen.Add(1)
	return nil
}

// count adds d to the counts that let lookups skip steps.
func (t *Table) count(k *Key, d int32) {
	if exactShape(k.Flags) {
		t.exact[k.LocalPort].Add(uint32(d))
	} else {
		t.shapes[k.Flags].Add(d)
	}
}

// removed updates the counts after the rule with key k and entry e is gone.
func (t *Table) removed(k *Key, e entry) {
	t.count(k, -1)
	if q := t.quotaOf(e.port()); q != nil {
		q.give(1)
	}
	if e.kind() == Learned {
		t.learned.Add(-1)
	}
	t.gen.Add(1)
}

// Remove deletes the rule with key k if owner holds it, and reports whether
// it did.
func (t *Table) Remove(k Key, owner PortID) bool {
	mine := func(e entry) bool { return e.port() == owner }
	var e entry
	var ok bool
	if k.Local.Is4() {
		c, valid := pack4(&k)
		if !valid {
			return false
		}
		e, ok = t.v4.remove(t.hash4(&c), c, mine)
	} else {
		c, valid := pack6(&k)
		if !valid {
			return false
		}
		e, ok = t.v6.remove(t.hash6(&c), c, mine)
	}
	if ok {
		t.removed(&k, e)
	}
	return ok
}

// RemoveOwner deletes every rule that port holds and returns how many.
func (t *Table) RemoveOwner(port PortID) int {
	return t.RemoveIf(func(r Rule) bool { return r.Owner.Port == port })
}

// RemoveIf deletes every rule for which drop returns true and returns how
// many. drop is called with a writer lock held: it must not call back into
// t. It walks the whole table.
func (t *Table) RemoveIf(drop func(Rule) bool) int {
	n := t.v4.removeIf(func(k *key4, e entry) bool { return drop(e.rule(unpack4(k))) },
		func(k *key4, e entry) { kk := unpack4(k); t.removed(&kk, e) })
	n += t.v6.removeIf(func(k *key6, e entry) bool { return drop(e.rule(unpack6(k))) },
		func(k *key6, e entry) { kk := unpack6(k); t.removed(&kk, e) })
	return n
}

// each calls f for every rule, bucket by bucket.
func (t *Table) each(f func(Key, entry)) {
	t.v4.each(func(k *key4, e entry) { f(unpack4(k), e) })
	t.v6.each(func(k *key6, e entry) { f(unpack6(k), e) })
}

// Rules returns every rule, sorted by owner, then by key. It sees each
// bucket at one instant, not the whole table.
func (t *Table) Rules() []Rule {
	var rs []Rule
	t.each(func(k Key, e entry) { rs = append(rs, e.rule(k)) })
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
func (t *Table) Len() int { return int(t.v4.n.Load() + t.v6.n.Load()) }

// Count returns the number of rules per kind (registered, learned).
func (t *Table) Count() (registered, learned int) {
	learned = int(t.learned.Load())
	return t.Len() - learned, learned
}

// Gen returns a number that changes whenever a rule is added or removed.
func (t *Table) Gen() uint64 { return t.gen.Load() }
