package l4

// What the control plane (package control) needs from the table beyond its
// data-path API: read-only walks that do not copy the table. They take no
// lock, like Lookup, and see each bucket at one instant.

// RulesAt returns the rules whose key has the local address local, the
// protocol proto and the local port lport (ignored for protocols without
// ports): every rule a frame to that local address and port could match.
// The control plane checks a new registered rule against them for overlap.
// Rules are spread over the table by their whole key, so this walks the
// table of local's family (a few milliseconds at 100,000 rules); it is
// called when a client registers a rule, never per frame.
func (t *Table) RulesAt(local Addr, proto uint8, lport uint16) []Rule {
	if !HasPorts(proto) {
		lport = 0
	}
	var rs []Rule
	match := func(k Key, e entry) {
		if k.Local == local && k.Proto == proto && k.LocalPort == lport {
			rs = append(rs, e.rule(k))
		}
	}
	if local.Is4() {
		t.v4.each(func(k *key4, e entry) {
			if uint8(k.b>>32) == proto && uint16(k.b>>16) == lport {
				match(unpack4(k), e)
			}
		})
	} else {
		t.v6.each(func(k *key6, e entry) {
			if uint8(k.b>>32) == proto && uint16(k.b>>16) == lport {
				match(unpack6(k), e)
			}
		})
	}
	return rs
}

// Each calls f for every rule, bucket by bucket, without allocating. f must
// not change the table.
func (t *Table) Each(f func(Rule)) {
	t.each(func(k Key, e entry) { f(e.rule(k)) })
}
