package l4

import (
	"errors"
	"runtime"
	"sync/atomic"
	"time"
)

// rxCounters are written by one RX worker only, once per batch.
type rxCounters struct {
	packets atomic.Uint64
	bytes   atomic.Uint64
	errors  atomic.Uint64 // Recv errors other than ErrPortClosed
	_       [40]byte
}

// txCounters are written by one TX goroutine only.
type txCounters struct {
	packets atomic.Uint64
	bytes   atomic.Uint64
	errors  atomic.Uint64
	_       [40]byte
}

// rxWorker reads one receive queue of one port and routes its frames.
type rxWorker struct {
	p     *Pipeline
	ps    *portState
	queue int

	// seq is odd while the worker is inside a batch: RemovePort waits for
	// it to move on (Pipeline.quiesce).
	seq   atomic.Uint64
	rx    rxCounters
	drops [NumDropReasons]atomic.Uint64

	// Owned by the worker goroutine.
	out     map[*portState]*Ring
	outIn   []*inRing // the same rings, to mark dead at exit
	topo    *topology
	pending []pending
	frames  []Frame      // the current batch, parsed
	reasons []DropReason // Parse's verdict on each
	lb      batchScratch
	held    []uint64
	tap     *Ring                  // this worker's ring to the Tap, if any
	tapped  []*Buf                 // frames of the current batch for the tap
	local   [NumDropReasons]uint64 // drops of the current batch
}

// pending is a batch of frames for one destination.
type pending struct {
	dst  *portState
	bufs []*Buf
}

func (p *Pipeline) newWorker(ps *portState, q int) *rxWorker {
	w := &rxWorker{p: p, ps: ps, queue: q, out: map[*portState]*Ring{}}
	w.frames, w.reasons = make([]Frame, p.cfg.BatchSize), make([]DropReason, p.cfg.BatchSize)
	if p.cfg.Tap != nil {
		w.tap = p.cfg.Tap.ring()
		w.tapped = make([]*Buf, 0, p.cfg.BatchSize)
	}
	return w
}

func (w *rxWorker) run() {
	defer w.p.wg.Done()
	defer w.ps.rxWG.Done()
	// Only the NIC's queues get a thread of their own (and may be pinned):
	// their number is fixed. Every other port's worker is a goroutine that
	// waits in the netpoller, so threads do not grow with channels.
	nic := w.ps.owner.Kind == PortNIC
	var cache *BufCache
	if nic {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if f := w.p.cfg.OnThreadStart; f != nil {
			f("rx", w.ps.owner, w.queue)
		}
		cache = w.p.pool.NewCache()
	} else {
		cache = w.p.pool.NewLimitedCache()
	}
	defer func() {
		for _, in := range w.outIn {
			in.dead.Store(true)
		}
		// The consumers drop the dead rings once they drained them.
		cache.Flush()
	}()
	// The NIC's few workers keep their batch at hand; every other port
	// that can wait without buffers does.
	if wt, ok := w.ps.port.(RxWaiter); ok && !nic {
		w.runWaiting(wt, cache)
		return
	}
	bs := w.p.cfg.BatchSize
	bufs := make([]*Buf, bs)
	have := 0
	defer func() { cache.ReleaseBatch(bufs[:have]) }()
	var starved int
	for {
		if have < bs {
			have += cache.GetBatch(bufs[have:])
			if have == 0 {
				// The pool is exhausted: frames wait in the device (or its
				// queue drops them) until TX goroutines free buffers.
				w.drops[DropNoBuffer].Add(1)
				if w.ps.closing.Load() {
					return
				}
				w.backoff(&starved)
				continue
			}
		}
		starved = 0
		n, err := w.ps.port.Recv(w.queue, bufs[:have])
		if err != nil {
			if w.stopOn(err) {
				return
			}
			continue
		}
		if n <= 0 {
			continue
		}
		n = min(n, have)
		w.seq.Add(1)
		w.process(bufs[:n], cache)
		w.seq.Add(1)
		copy(bufs, bufs[n:have])
		clear(bufs[have-n : have])
		have -= n
	}
}

// runWaiting is the loop of a port that waits for frames without buffers:
// it takes a batch only when frames are ready, and gives back its cache
// whenever WaitRx is about to block, so an idle port holds no buffer.
func (w *rxWorker) runWaiting(wt RxWaiter, cache *BufCache) {
	bufs := make([]*Buf, w.p.cfg.BatchSize)
	idle := cache.Flush
	var starved int
	for {
		ready, err := wt.WaitRx(w.queue, idle)
		if err != nil {
			if w.stopOn(err) {
				return
			}
			continue
		}
		if !ready {
			continue
		}
		have := cache.GetBatch(bufs)
		if have == 0 {
			// Only the reserve is left: the frames wait in the port's
			// queue (its socket buffer) until buffers come back.
			w.drops[DropNoBuffer].Add(1)
			if w.ps.closing.Load() {
				return
			}
			w.backoff(&starved)
			continue
		}
		starved = 0
		n, err := w.ps.port.Recv(w.queue, bufs[:have])
		n = max(0, min(n, have))
		if n > 0 {
			w.seq.Add(1)
			w.process(bufs[:n], cache)
			w.seq.Add(1)
		}
		cache.ReleaseBatch(bufs[n:have])
		clear(bufs[:have])
		if err != nil && w.stopOn(err) {
			return
		}
	}
}

// stopOn handles a receive error: it reports true when the worker is done.
func (w *rxWorker) stopOn(err error) bool {
	// The port is closing (RemovePort, Close): whatever error its backend
	// returns now, the worker is done. A backend should say ErrPortClosed,
	// but one that says EBADF must not keep the worker, and so the
	// pipeline's Close, waiting forever.
	if errors.Is(err, ErrPortClosed) || w.ps.closing.Load() {
		return true
	}
	// A receive error is the device's: count it and go on.
	w.rx.errors.Add(1)
	time.Sleep(time.Millisecond)
	return false
}

// backoff sleeps after the pool had no buffer for this worker: 100 µs,
// doubling up to 10 ms while it stays so, so that a thousand starved
// channels do not spin.
func (w *rxWorker) backoff(starved *int) {
	d := 100 * time.Microsecond << min(*starved, 7)
	*starved++
	time.Sleep(min(d, 10*time.Millisecond))
}

// process routes one batch of received frames.
func (w *rxWorker) process(frames []*Buf, cache *BufCache) {
	p := w.p
	if t := p.topo.Load(); t != w.topo {
		w.topo = t
		w.prune()
	}
	in := w.ps.owner
	var now int64
	if w.tap != nil {
		now = time.Now().UnixNano()
	}
	var bytes uint64
	if p.cfg.Classify == nil {
		// Parse the whole batch, then look its frames up together, so that
		// their cache misses overlap (batch.go).
		for i, b := range frames {
			w.reasons[i] = Parse(b.Bytes(), &w.frames[i])
		}
		p.sw.lookupBatch(in, w.frames[:len(frames)], w.reasons[:len(frames)], &w.lb)
	}
	for i, b := range frames {
		b.ts = now
		bytes += uint64(b.Len())
		var v Verdict
		if p.cfg.Classify != nil {
			v = p.cfg.Classify(in, b)
		} else {
			f := &w.frames[i]
			if r := w.reasons[i]; r != DropNone {
				v = drop(r)
			} else {
				v = p.sw.Decide(in, f, uint64(b.Index()))
				if v.Release {
					w.held = p.sw.TakeHeld(f, w.held[:0])
				}
			}
		}
		w.route(b, v, cache)
		if v.Release {
			for _, h := range w.held {
				if hb := p.pool.Buf(int(h)); hb != nil {
					w.route(hb, v, cache)
				}
			}
			w.held = w.held[:0]
		}
	}
	w.rx.packets.Add(uint64(len(frames)))
	w.rx.bytes.Add(bytes)
	w.flush(cache)
}

// route adds b to the batch of the verdict's destination(s).
func (w *rxWorker) route(b *Buf, v Verdict, cache *BufCache) {
	switch v.Action {
	case ActForward:
		if dst := w.topo.ports[v.To.Port]; dst != nil {
			w.tapFrame(b, v)
			w.add(dst, b)
			return
		}
		v = drop(DropPortGone)
	case ActUplink:
		if w.ps.host {
			v = drop(DropNoMatch) // the kernel sent it to the wire itself
			break
		}
		if dst := w.topo.nic; dst != nil && dst != w.ps {
			w.tapFrame(b, v)
			w.add(dst, b)
			return
		}
		v = drop(DropPortGone)
	case ActFlood:
		n := int32(0)
		for _, dst := range w.topo.list {
			if w.floodTo(dst) {
				n++
			}
		}
		if n == 0 {
			v = drop(DropNoMatch)
			break
		}
		w.tapFrame(b, v)
		b.Retain(n - 1)
		for _, dst := range w.topo.list {
			if w.floodTo(dst) {
				w.add(dst, b)
			}
		}
		return
	case ActHold:
		return // the switch keeps it until its first fragment comes
	}
	// Dropped.
	w.local[v.Reason]++
	w.tapFrame(b, v)
	cache.Release(b)
}

// tapFrame hands a reference to b to the tap, if there is one, with the
// port it came from and its verdict; the caller still owns its own.
func (w *rxWorker) tapFrame(b *Buf, v Verdict) {
	if w.tap != nil {
		v.Release = false
		b.setTapped(TapRecord{In: w.ps.owner, Verdict: v})
		b.Retain(1)
		w.tapped = append(w.tapped, b)
	}
}

// floodTo says whether a flooded frame from this worker's port goes to dst:
// every other port; from the NIC, every port but NICs and a HostPath port;
// from a HostPath port, every port but the NIC.
func (w *rxWorker) floodTo(dst *portState) bool {
	if dst == w.ps {
		return false
	}
	if w.ps.owner.Kind == PortNIC {
		return dst.owner.Kind != PortNIC && !dst.host
	}
	return !(w.ps.host && dst.owner.Kind == PortNIC)
}

func (w *rxWorker) add(dst *portState, b *Buf) {
	for i := range w.pending {
		if w.pending[i].dst == dst {
			w.pending[i].bufs = append(w.pending[i].bufs, b)
			return
		}
	}
	w.pending = append(w.pending, pending{dst: dst, bufs: append(w.spare(), b)})
}

// spare returns an empty slice for a new pending batch, reusing old ones.
func (w *rxWorker) spare() []*Buf {
	n := len(w.pending)
	if n < cap(w.pending) {
		if old := w.pending[:n+1][n].bufs; old != nil {
			return old[:0]
		}
	}
	return make([]*Buf, 0, w.p.cfg.BatchSize)
}

// flush pushes every pending batch into its ring and counts the drops.
func (w *rxWorker) flush(cache *BufCache) {
	for i := range w.pending {
		pd := &w.pending[i]
		r := w.p.ring(w, pd.dst)
		k := 0
		if r != nil {
			want := len(pd.bufs)
			allow := want
			if pd.dst.quota {
				allow = w.p.admit(pd.dst, want)
				w.local[DropQuota] += uint64(want - allow)
			}
			k = r.PushBatch(pd.bufs[:allow])
			if k > 0 {
				pd.dst.waker.Wake()
			}
			if pd.dst.quota && k < allow {
				w.p.unadmit(pd.dst, allow-k)
			}
			w.local[DropRingFull] += uint64(allow - k)
		} else {
			w.local[DropPortGone] += uint64(len(pd.bufs))
		}
		cache.ReleaseBatch(pd.bufs[k:])
		clear(pd.bufs)
		pd.bufs = pd.bufs[:0]
		pd.dst = nil
	}
	w.pending = w.pending[:0]
	if len(w.tapped) > 0 {
		k := w.tap.PushBatch(w.tapped)
		cache.ReleaseBatch(w.tapped[k:])
		clear(w.tapped)
		w.tapped = w.tapped[:0]
		w.p.cfg.Tap.waker.Wake()
	}
	for r, n := range w.local {
		if n != 0 {
			w.drops[r].Add(n)
			w.local[r] = 0
		}
	}
}

// prune forgets the rings to ports that left the topology; their TX side
// drained and dropped them.
func (w *rxWorker) prune() {
	for dst := range w.out {
		if w.topo.ports[dst.owner.Port] != dst {
			delete(w.out, dst)
		}
	}
	live := w.outIn[:0]
	for _, in := range w.outIn {
		if _, ok := w.out[in.to]; ok {
			live = append(live, in)
		}
	}
	clear(w.outIn[len(live):])
	w.outIn = live
}
