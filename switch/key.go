package l4

import "encoding/binary"

// The table's compact keys. Both hold a whole Key: the addresses, and in b
// the shape (Key.Flags) in bits 40-47, the protocol in 32-39, the local
// port in 16-31 and the remote port in 0-15. Unset fields are zero.

// key4 is the key of a rule whose local address is IPv4: a holds the local
// address in its high half and the remote address (if any) in its low
// half. 16 bytes, compared as two words.
type key4 struct{ a, b uint64 }

// key6 is the key of a rule whose local address is IPv6.
type key6 struct{ l0, l1, r0, r1, b uint64 }

func keyWord(k *Key) uint64 {
	return uint64(k.Flags)<<40 | uint64(k.Proto)<<32 | uint64(k.LocalPort)<<16 | uint64(k.RemotePort)
}

// canonical reports whether k can be held in a compact key exactly: a
// known shape, no field set without its flag, and a remote address of the
// local address's family. Every valid rule's key is canonical.
func canonical(k *Key) bool {
	if k.Flags >= 8 || k.Flags&KeyLocalPort == 0 && k.LocalPort != 0 || k.Flags&KeyRemotePort == 0 && k.RemotePort != 0 {
		return false
	}
	if k.Flags&KeyRemote == 0 {
		return k.Remote.IsZero()
	}
	return k.Remote.Is4() == k.Local.Is4()
}

// pack4 returns the compact key of k, whose local address is IPv4; false
// when k is not canonical.
func pack4(k *Key) (key4, bool) {
	if !canonical(k) {
		return key4{}, false
	}
	a := uint64(binary.BigEndian.Uint32(k.Local[12:])) << 32
	if k.Flags&KeyRemote != 0 {
		a |= uint64(binary.BigEndian.Uint32(k.Remote[12:]))
	}
	return key4{a, keyWord(k)}, true
}

// pack6 is pack4 for an IPv6 local address.
func pack6(k *Key) (key6, bool) {
	if !canonical(k) {
		return key6{}, false
	}
	c := key6{b: keyWord(k)}
	c.l0, c.l1 = k.Local.halves()
	c.r0, c.r1 = k.Remote.halves()
	return c, true
}

func unpackWord(k *Key, b uint64) {
	k.Flags, k.Proto = uint8(b>>40), uint8(b>>32)
	k.LocalPort, k.RemotePort = uint16(b>>16), uint16(b)
}

func unpack4(c *key4) Key {
	k := Key{Local: addrFrom4Uint(uint32(c.a >> 32))}
	unpackWord(&k, c.b)
	if k.Flags&KeyRemote != 0 {
		k.Remote = addrFrom4Uint(uint32(c.a))
	}
	return k
}

func unpack6(c *key6) Key {
	var k Key
	binary.LittleEndian.PutUint64(k.Local[0:], c.l0)
	binary.LittleEndian.PutUint64(k.Local[8:], c.l1)
	binary.LittleEndian.PutUint64(k.Remote[0:], c.r0)
	binary.LittleEndian.PutUint64(k.Remote[8:], c.r1)
	unpackWord(&k, c.b)
	return k
}

func addrFrom4Uint(v uint32) Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return AddrFrom4(b)
}

// hash4 is the hash of an IPv4 key, seeded per table: two
// multiply-and-fold steps. Its low bits pick the bucket and the writer's
// stripe.
func (t *Table) hash4(k *key4) uint64 {
	return mix(mix(k.a^t.seed[0], k.b^t.seed[1]), t.seed[2])
}

// hash6 is the hash of an IPv6 key.
func (t *Table) hash6(k *key6) uint64 {
	h := mix(k.l0^t.seed[0], k.l1^t.seed[1])
	h = mix(h^k.r0, k.r1^t.seed[2])
	return mix(h^k.b, t.seed[3])
}
