package l4

// Batched lookups: the RX worker classifies a receive batch in passes, so
// that the cache misses of its frames' lookups overlap instead of
// following one another (the way DPDK's bulk hash lookups do it).
//
//	pass 1: per frame, the key of its first lookup step and the key's hash
//	        (computed once per frame) and a prefetch of its bucket, one
//	        cache line at an address computed from the hash (hashtab4.go:
//	        no pointer to load first);
//	pass 2: per frame, the lookup itself, on lines that are arriving or
//	        there; its result is kept in the Frame for Decide's match step.
//
// A prefetch retires at once, so pass 1 puts up to a batch of misses in
// flight; a plain load (the previous way, still used where the package has
// no prefetch instruction) holds the core's reorder window until its line
// arrives, which let only a few misses overlap. BenchmarkClassifyBatch's
// touch=prefetch/load/none compares the three in one run (BENCHMARKS.md).
//
// A table of at most touchRules IPv4 rules stays in the caches: then one
// pass computes each frame's key and hash and looks it up.
//
// Only IPv4 frames from a NIC port take part, the bulk of the traffic: they
// teach the table nothing (Decide learns only from the other ports), so
// nothing in the batch changes the table between pass 1 and the frame's
// Decide. A result is used within the batch's Decide calls only: the
// worker is inside the batch (rxWorker.seq odd) the whole time, so
// Pipeline.RemovePort, which waits for every worker to leave its batch
// after removing a port's rules, still sees no frame decided for the port
// afterwards. Frames the batch leaves out are looked up by Decide as before.

// preLookup is the result of the batched lookup of a Frame's destination
// (Dst, DstPort <- Src, SrcPort), set by lookupBatch and cleared by Parse.
type preLookup struct {
	owner   Owner
	ok      bool
	done    bool
	watched bool // the rule found is Watched
}

// touchRules is the number of IPv4 rules above which lookupBatch touches
// the buckets of a batch before it compares: 4,096 rules take at most
// 256 KB of buckets, which a core's L2 cache holds.
const touchRules = 4096

// How lookupBatch brings a big table's buckets in before it compares.
const (
	touchPrefetch = iota // prefetch instructions (touchLoad without them)
	touchLoad            // a load of each bucket
	touchNone            // nothing: compare at once (for measurements)
)

// batchTouch is set by benchmarks only, before any lookup runs.
var batchTouch = touchPrefetch

// batchScratch is an RX worker's memory for lookupBatch.
type batchScratch struct {
	k    []key4
	h    []uint64
	use  []bool
	sink int // keeps the passes' loads from being optimised away
}

// lookupBatch does the destination lookup of every IPv4 frame of a batch
// received from a NIC port (see above). reasons are Parse's results.
func (s *Switch) lookupBatch(in Owner, fs []Frame, reasons []DropReason, sc *batchScratch) {
	if in.Kind != PortNIC {
		return
	}
	t := s.Table
	if cap(sc.k) < len(fs) {
		sc.k, sc.h, sc.use = make([]key4, len(fs)), make([]uint64, len(fs)), make([]bool, len(fs))
	}
	ks, hs, use := sc.k[:len(fs)], sc.h[:len(fs)], sc.use[:len(fs)]
	// A small table stays in the caches: then the touching passes would
	// only cost, and one loop does it all.
	if t.v4.n.Load() <= touchRules {
		for i := range fs {
			f := &fs[i]
			if reasons[i] != DropNone || f.Kind != KindIPv4 || f.ICMPError || f.NeighborDiscovery || f.Fragment && f.FragOffset != 0 {
				continue
			}
			k := t.firstKey4(&f.Dst, f.DstPort, &f.Src, f.SrcPort, f.Proto)
			t.lookupFirst(f, t.hash4(&k), &k)
		}
		return
	}
	sink := 0
	for i := range fs {
		f := &fs[i]
		use[i] = false
		if reasons[i] != DropNone || f.Kind != KindIPv4 || f.ICMPError || f.NeighborDiscovery || f.Fragment && f.FragOffset != 0 {
			continue
		}
		ks[i] = t.firstKey4(&f.Dst, f.DstPort, &f.Src, f.SrcPort, f.Proto)
		h := t.hash4(&ks[i])
		hs[i], use[i] = h, true
		if batchTouch == touchPrefetch && havePrefetch {
			prefetch(t.v4.first(h))
		}
	}
	if batchTouch == touchLoad || batchTouch == touchPrefetch && !havePrefetch {
		for i := range fs {
			if use[i] {
				sink += int(t.v4.first(hs[i]).Load() & 1) // the bucket's one line
			}
		}
	}
	for i := range fs {
		if use[i] {
			t.lookupFirst(&fs[i], hs[i], &ks[i])
		}
	}
	sc.sink += sink
}

// lookupFirst looks f up by the key k (of hash h) of its first lookup
// step, and by the other steps if that misses, and keeps the result in f.
func (t *Table) lookupFirst(f *Frame, h uint64, k *key4) {
	if e, ok := t.v4.get(h, k); ok {
		f.pre = preLookup{owner: e.owner(), ok: true, done: true, watched: e.watched()}
		return
	}
	e, _, ok := t.find(&f.Dst, f.DstPort, &f.Src, f.SrcPort, f.Proto)
	f.pre = preLookup{owner: e.owner(), ok: ok, done: true, watched: e.watched()}
}

// firstKey4 returns the key of the first lookup step that find would probe
// for an IPv4 packet: exact when an exact rule has the local port, else
// remote address when there are such rules, else listening.
func (t *Table) firstKey4(local *Addr, lport uint16, remote *Addr, rport uint16, proto uint8) key4 {
	lf, xf := uint8(KeyLocalPort), KeyLocalPort|KeyRemote|KeyRemotePort
	if !HasPorts(proto) {
		lport, rport = 0, 0
		lf, xf = 0, KeyRemote
	}
	l := uint64(beUint32(local[12:])) << 32
	pb := uint64(proto)<<32 | uint64(lport)<<16
	r := uint64(beUint32(remote[12:]))
	switch {
	case t.exact[lport].Load() != 0:
		return key4{l | r, uint64(xf)<<40 | pb | uint64(rport)}
	case lf != 0 && t.shapes[KeyLocalPort|KeyRemote].Load() != 0:
		return key4{l | r, uint64(KeyLocalPort|KeyRemote)<<40 | pb}
	}
	return key4{l, uint64(lf)<<40 | pb}
}

func beUint32(b []byte) uint32 {
	_ = b[3]
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
