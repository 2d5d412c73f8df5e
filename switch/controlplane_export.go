package l4

// What the control plane (package control) needs from the table beyond its
// data-path API: read-only walks that neither allocate per rule nor copy
// the table. They take no lock, like Lookup, and see each shard at one
// instant.

// RulesAt returns the rules whose key has the local address local, the
// protocol proto and the local port lport (ignored for protocols without
// ports): every rule a frame to that local address and port could match.
// The control plane checks a new registered rule against them for overlap.
// It reads one shard, not the whole table.
func (t *Table) RulesAt(local Addr, proto uint8, lport uint16) []Rule {
	if !HasPorts(proto) {
		lport = 0
	}
	var rs []Rule
	t.shards[shardOf(&local, proto, lport)].snap.Load().each(func(k *Key, e entry) {
		if k.Local == local && k.Proto == proto && k.LocalPort == lport {
			rs = append(rs, e.rule(*k))
		}
	})
	return rs
}

// Each calls f for every rule, shard by shard, without allocating. f must
// not change the table.
func (t *Table) Each(f func(Rule)) {
	for i := range t.shards {
		t.shards[i].snap.Load().each(func(k *Key, e entry) { f(e.rule(*k)) })
	}
}
