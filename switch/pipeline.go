package l4

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// The pipeline: the data path of one switch domain (one NIC and the ports
// attached to it), end to end.
//
//	port queue ─► RX worker ─► parse ─► Decide ─► batch per destination ─► Ring ─► TX goroutine ─► port.Send
//
// Goroutines and what they own:
//
//   - One RX worker per receive queue of every port. The NIC's are locked
//     to their OS threads (PipelineConfig.OnThreadStart may pin them);
//     every other port's is a goroutine that waits in Go's netpoller
//     (see port.go), so threads do not grow with channels. A worker owns a
//     BufCache, its counters, and the producer end of one Ring per
//     destination it has sent to, made on first use.
//   - One TX goroutine per port. It owns the consumer end of every Ring
//     into its port, drains them round-robin, sends, and releases the
//     buffers into its own BufCache. With nothing to do it waits on the
//     port's Waker (spin briefly, then park).
//   - Control-plane calls (AddPort, RemovePort, Close, Stats) serialise on
//     the pipeline's mutex and never block the data path: the set of ports
//     is a copy-on-write snapshot that RX workers load once per batch.
//
// A full ring never blocks its producer: what does not fit is dropped and
// counted (DropRingFull), so a stalled port slows down no other port.
//
// Buffers are bounded by what ports may hold, so that no endpoint and no
// remote sender can starve the others:
//
//   - the NIC's receive path has a reserve (PipelineConfig.Reserve) that the
//     workers of other ports never take (BufPool.SetReserve), that the
//     fragment store does not hold fragments from, and that no frame for a
//     non-NIC port waits in (see admit);
//   - frames queued to a non-NIC port (an endpoint, the kernel's TAP) count
//     against its quota (PortQuota) and against the room left under the
//     quota of all of them together (QueuedLimit, see admit); beyond
//     either they are dropped (DropQuota), so a thousand channels that
//     never drain hold at most QueuedLimit buffers, and a channel that
//     reads still finds room next to them;
//   - an idle endpoint holds no buffer (port.go, RxWaiter);
//   - held fragments are bounded in bytes, per interface and per source
//     address, oldest evicted first (frag.go).//
//
// Removing a port: its rules go first, then it leaves the snapshot; the
// remover waits until every RX worker has finished the batch it was in
// (so none can push to the port any more), closes the port, stops its
// goroutines and releases every frame still queued for it. Nothing is lost
// uncounted: at Close, every buffer is back in the pool.
type Pipeline struct {
	sw   *Switch
	pool *BufPool
	cfg  PipelineConfig

	mu      sync.Mutex // serialises topology changes
	nextID  PortID
	closed  bool
	topo    atomic.Pointer[topology]
	workers atomic.Pointer[[]*rxWorker] // every RX worker, for quiescence
	wg      sync.WaitGroup

	// held fragments are released into the pool by FragSweep.
	sweepCache *BufCache
	sweepMu    sync.Mutex
	fragDrops  atomic.Uint64

	// queued counts the frames queued to every non-NIC port (QueuedLimit).
	queued atomic.Int64
	_      [56]byte

	// retiredDrops keeps the drop counts of removed ports, so that totals
	// never go down.
	retiredDrops [NumDropReasons]atomic.Uint64
}

// PipelineConfig tunes a Pipeline. Zero values mean the defaults.
type PipelineConfig struct {
	RingSize  int // slots per ring (power of two); default 1024
	BatchSize int // frames per receive and per send; default 64
	Buffers   int // frames in the buffer pool; default 16384
	BufSize   int // bytes per buffer (largest frame); default DefaultBufSize
	WakerSpin int // polls before an idle TX goroutine parks; default DefaultWakerSpin

	// Reserve is the number of buffers that only the NIC's receive path
	// may take; default Buffers/4.
	Reserve int
	// PortQuota is the most frames queued to one non-NIC port; default
	// Buffers/16, at least 2*BatchSize.
	PortQuota int
	// QueuedLimit is the most frames queued to all non-NIC ports together;
	// default Buffers/2.
	QueuedLimit int
	// FragMemory is the most bytes of held fragments (counted as whole
	// buffers); default Buffers*BufSize/8, at most 4 MiB (Linux's
	// ipfrag_high_thresh). Above it the oldest datagrams' fragments are
	// evicted until 3/4 of it is left. FragPerSource bounds the held bytes
	// of one source address the same way; default FragMemory/4.
	FragMemory    int
	FragPerSource int

	// Classify, when set, replaces Parse and Decide: benchmarks use it
	// for a fixed-destination baseline that shows what switching costs.
	Classify func(in Owner, b *Buf) Verdict

	// Tap, when set, gets every received frame with its verdict (PCAP_LOG).
	Tap *Tap

	// OnThreadStart is called by every RX worker of the NIC's port on its
	// locked OS thread before it receives, e.g. to pin it to a CPU (a
	// system call, which this package leaves to its caller); the workers
	// of other ports have no thread of their own. role is "rx"; port and
	// queue name the worker.
	OnThreadStart func(role string, port Owner, queue int)
}

func (c *PipelineConfig) fill() error {
	if c.RingSize == 0 {
		c.RingSize = 1024
	}
	if c.BatchSize == 0 {
		c.BatchSize = 64
	}
	if c.Buffers == 0 {
		c.Buffers = 16384
	}
	if c.BatchSize < 1 || c.BatchSize > 4096 {
		return fmt.Errorf("batch size %d: must be 1..4096", c.BatchSize)
	}
	if c.RingSize < 2 || c.RingSize&(c.RingSize-1) != 0 {
		return fmt.Errorf("ring size %d: must be a power of two", c.RingSize)
	}
	if c.Buffers < 2*c.BatchSize {
		return fmt.Errorf("%d buffers: need at least two batches (%d)", c.Buffers, 2*c.BatchSize)
	}
	if c.BufSize == 0 {
		c.BufSize = DefaultBufSize
	}
	if c.Reserve == 0 {
		c.Reserve = c.Buffers / 4
	}
	if c.PortQuota == 0 {
		c.PortQuota = max(c.Buffers/16, 2*c.BatchSize)
	}
	if c.QueuedLimit == 0 {
		c.QueuedLimit = c.Buffers / 2
	}
	if c.FragMemory == 0 {
		c.FragMemory = min(c.Buffers/8*c.BufSize, 4<<20)
	}
	if c.FragPerSource == 0 {
		c.FragPerSource = c.FragMemory / 4
	}
	if c.Reserve < 0 || c.Reserve >= c.Buffers || c.PortQuota < 0 || c.QueuedLimit < 0 || c.FragMemory < 0 || c.FragPerSource < 0 {
		return fmt.Errorf("buffer quotas: reserve %d, port quota %d, queued limit %d, fragment memory %d/%d: must be positive, the reserve below %d buffers",
			c.Reserve, c.PortQuota, c.QueuedLimit, c.FragMemory, c.FragPerSource, c.Buffers)
	}
	return nil
}

// topology is the immutable set of ports that RX workers route to.
type topology struct {
	ports map[PortID]*portState
	list  []*portState // the same ports, for flooding
	nic   *portState   // the uplink: the domain's NIC port, if attached
}

type portState struct {
	owner   Owner
	port    Port
	name    string
	waker   *Waker
	inbox   atomic.Pointer[[]*inRing] // rings this port's TX goroutine drains (copy-on-write under Pipeline.mu)
	stop    chan struct{}             // closed to stop the TX goroutine
	closing atomic.Bool               // set before the port is closed: RX workers stop at their next error
	quota   bool                      // frames queued to it count against PortQuota and QueuedLimit (non-NIC)
	host    bool                      // a kernel port beside the NIC (HostPath)
	queued  atomic.Int64              // frames in its inbox rings, when quota
	txDone  chan struct{}
	rx      []*rxWorker
	rxWG    sync.WaitGroup
	tx      txCounters
}

// inRing is one ring into a port, from one RX worker.
type inRing struct {
	r    *Ring
	from *rxWorker
	to   *portState
	dead atomic.Bool // the producer is gone: drop the ring when empty
}

// NewPipeline returns a pipeline over switch domain sw.
func NewPipeline(sw *Switch, cfg PipelineConfig) (*Pipeline, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	pool, err := NewBufPool(cfg.Buffers, cfg.BufSize)
	if err != nil {
		return nil, err
	}
	pool.SetReserve(cfg.Reserve)
	if cfg.Tap != nil {
		pool.enableTap()
	}
	p := &Pipeline{sw: sw, pool: pool, cfg: cfg}
	sw.frags.configure(fragLimits{
		total:     int64(cfg.FragMemory),
		perSource: int64(cfg.FragPerSource),
		bufSize:   int64(pool.Stats().BufSize),
		// A fragment is held only while more than the NIC's reserve is free.
		mayHold: func() bool { return pool.shared.Load() > pool.reserve.Load() },
		free:    p.freeFrag,
	})
	p.topo.Store(&topology{ports: map[PortID]*portState{}})
	p.workers.Store(&[]*rxWorker{})
	p.sweepCache = pool.NewCache()
	return p, nil
}

// Switch returns the pipeline's switch domain.
func (p *Pipeline) Switch() *Switch { return p.sw }

// PortName returns the name of port id, while it is attached.
func (p *Pipeline) PortName(id PortID) (string, bool) {
	ps := p.topo.Load().ports[id]
	if ps == nil {
		return "", false
	}
	return ps.name, true
}

// Pool returns the pipeline's buffer pool (backends that register its
// memory with a device use it).
func (p *Pipeline) Pool() *BufPool { return p.pool }

// ErrPipelineClosed is returned by AddPort after Close.
var ErrPipelineClosed = errors.New("pipeline closed")

// ErrSecondNIC is returned by AddPort for a second NIC port: a domain has one.
var ErrSecondNIC = errors.New("switch domain has a NIC port already")

// AddPort attaches port and starts its goroutines. It returns the port's
// owner identity, under which rules for it are made.
func (p *Pipeline) AddPort(port Port) (Owner, error) { return p.AddPortQuota(port, nil) }

// AddPortQuota is AddPort with the port's rules counted against q (see
// RuleQuota) from its first frame on; RemovePort takes the quota off again.
func (p *Pipeline) AddPortQuota(port Port, q *RuleQuota) (Owner, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Owner{}, ErrPipelineClosed
	}
	old := p.topo.Load()
	if port.Kind() == PortNIC && old.nic != nil {
		return Owner{}, ErrSecondNIC
	}
	if port.RxQueues() < 0 || port.RxQueues() > 1024 {
		return Owner{}, fmt.Errorf("port %s: %d receive queues", port.Name(), port.RxQueues())
	}
	if p.nextID+1 == KernelPort {
		return Owner{}, errors.New("port ids exhausted")
	}
	p.nextID++
	ps := &portState{
		owner:  Owner{Port: p.nextID, Kind: port.Kind()},
		port:   port,
		name:   port.Name(),
		waker:  NewWaker(p.cfg.WakerSpin),
		stop:   make(chan struct{}),
		txDone: make(chan struct{}),
		quota:  port.Kind() != PortNIC,
	}
	if h, ok := port.(HostPath); ok && port.Kind() == PortKernel {
		ps.host = h.HostPath()
	}
	ps.inbox.Store(&[]*inRing{})
	for q := range port.RxQueues() {
		ps.rx = append(ps.rx, p.newWorker(ps, q))
	}
	n := &topology{ports: make(map[PortID]*portState, len(old.ports)+1), nic: old.nic}
	for id, s := range old.ports {
		n.ports[id] = s
	}
	n.ports[ps.owner.Port] = ps
	n.list = append(append([]*portState(nil), old.list...), ps)
	if ps.owner.Kind == PortNIC {
		n.nic = ps
	}
	if q != nil {
		p.sw.Table.SetQuota(ps.owner.Port, q)
	}
	p.topo.Store(n)
	ws := append(append([]*rxWorker(nil), *p.workers.Load()...), ps.rx...)
	p.workers.Store(&ws)

	p.wg.Add(1)
	go p.txLoop(ps)
	for _, w := range ps.rx {
		ps.rxWG.Add(1)
		p.wg.Add(1)
		go w.run()
	}
	return ps.owner, nil
}

// ErrNoSuchPort is returned by RemovePort for a port that is not attached.
var ErrNoSuchPort = errors.New("no such port")

// SetPortPolicy sets what the client behind port id may do (PortPolicy),
// for the checks on the frames the port sends; until it is set, the port
// has the strictest policy. Set it right after AddPort, before the client
// gets the port's other end.
func (p *Pipeline) SetPortPolicy(id PortID, pol PortPolicy) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.topo.Load().ports[id] == nil {
		return ErrNoSuchPort
	}
	p.sw.SetPortPolicy(id, pol)
	return nil
}

// RemovePort detaches the port, removes every rule it holds, closes it and
// frees every frame still queued for it (counted as DropPortGone).
func (p *Pipeline) RemovePort(id PortID) error {
	p.mu.Lock()
	old := p.topo.Load()
	ps := old.ports[id]
	if ps == nil || p.closed {
		p.mu.Unlock()
		return ErrNoSuchPort
	}
	p.sw.Table.RemoveOwner(id)
	p.sw.SetPortPolicy(id, PortPolicy{})
	n := &topology{ports: make(map[PortID]*portState, len(old.ports)), nic: old.nic}
	for pid, s := range old.ports {
		if pid != id {
			n.ports[pid] = s
			n.list = append(n.list, s)
		}
	}
	if n.nic == ps {
		n.nic = nil
	}
	p.topo.Store(n)
	p.mu.Unlock()

	p.stopPort(ps)
	// A rule its worker learned in its last batch goes too, and then its
	// quota: after that nothing counts against it.
	p.sw.Table.RemoveOwner(id)
	p.sw.Table.SetQuota(id, nil)

	p.mu.Lock()
	ws := make([]*rxWorker, 0, len(*p.workers.Load()))
	for _, w := range *p.workers.Load() {
		if w.ps != ps {
			ws = append(ws, w)
		}
	}
	p.workers.Store(&ws)
	p.mu.Unlock()
	return nil
}

// stopPort stops a port that has left the topology: wait until no RX
// worker can push to it, close it, stop its goroutines, free its frames.
func (p *Pipeline) stopPort(ps *portState) {
	p.quiesce()
	ps.closing.Store(true)
	_ = ps.port.Close()
	ps.rxWG.Wait() // its RX workers flush their last batch and mark their rings dead
	close(ps.stop)
	ps.waker.Wake()
	<-ps.txDone
	cache := p.pool.NewCache()
	var scratch [64]*Buf
	for _, in := range *ps.inbox.Load() {
		for {
			k := in.r.PopBatch(scratch[:])
			if k == 0 {
				break
			}
			in.from.drops[DropPortGone].Add(uint64(k))
			p.unadmit(ps, k)
			cache.ReleaseBatch(scratch[:k])
		}
	}
	cache.Flush()
	for _, w := range ps.rx {
		for r := range w.drops {
			p.retiredDrops[r].Add(w.drops[r].Load())
		}
	}
	// Drops of other ports' workers counted while draining are in their
	// own counters already.
}

// quiesce waits until every RX worker that was inside a batch has left it:
// after that, no worker routes by a topology older than the current one.
func (p *Pipeline) quiesce() {
	ws := *p.workers.Load()
	seen := make([]uint64, len(ws))
	for i, w := range ws {
		seen[i] = w.seq.Load()
	}
	for i, w := range ws {
		for seen[i]&1 == 1 && w.seq.Load() == seen[i] {
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// Close stops every port and goroutine and returns every buffer to the
// pool. The ports are closed; rules stay in the table.
func (p *Pipeline) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	old := p.topo.Load()
	p.topo.Store(&topology{ports: map[PortID]*portState{}})
	p.mu.Unlock()
	// Held fragments go back to the pool first: a worker waiting for a
	// buffer must find one to notice that its port closes. Workers still
	// running may hold more until they stop; the second pass frees those.
	p.freeHeld()
	for _, ps := range old.list {
		p.stopPort(ps)
	}
	p.wg.Wait()
	p.freeHeld()
	return nil
}

// freeHeld frees every held fragment.
func (p *Pipeline) freeHeld() {
	p.sweepMu.Lock()
	defer p.sweepMu.Unlock()
	p.sw.frags.clear(func(h uint64) {
		if b := p.pool.Buf(int(h)); b != nil {
			p.sweepCache.Release(b)
		}
	})
	p.sweepCache.Flush()
}

// freeFrag releases a held fragment that the store evicted; it is called
// by the RX worker that holds a new one, under the store's lock.
func (p *Pipeline) freeFrag(h uint64) {
	if b := p.pool.Buf(int(h)); b != nil {
		b.Release()
	}
}

// admit reserves room for n frames queued to the non-NIC port dst and
// returns how many fit. A port may hold up to its PortQuota, but never
// more than the room left under the QueuedLimit of all (a dynamic
// threshold, as switch chips share their buffer): the more frames ports
// that do not drain hold, the less each may add, while one that drains
// (holding few) still finds the room that is left. With N ports that
// never drain, each holds about QueuedLimit/(N+1) and as much stays free.
// Nothing is queued while the pool is down to the NIC's reserve: the
// frame's buffer goes back at once, so that the reserve stays the NIC's.
// Two workers admitting at once may overshoot by one batch each.
func (p *Pipeline) admit(dst *portState, n int) int {
	if p.pool.shared.Load() <= p.pool.reserve.Load() {
		return 0
	}
	free := p.cfg.QueuedLimit - int(p.queued.Load())
	n = min(n, min(p.cfg.PortQuota, free)-int(dst.queued.Load()))
	if n <= 0 {
		return 0
	}
	dst.queued.Add(int64(n))
	p.queued.Add(int64(n))
	return n
}

// unadmit gives back the room of n frames that left dst's rings.
func (p *Pipeline) unadmit(dst *portState, n int) {
	if dst.quota && n > 0 {
		dst.queued.Add(-int64(n))
		p.queued.Add(-int64(n))
	}
}

// FragSweep ages the fragment memory by one tick; call it once a second.
// Held fragments whose first fragment never came are freed and counted.
func (p *Pipeline) FragSweep() {
	p.sweepMu.Lock()
	defer p.sweepMu.Unlock()
	p.sw.FragSweep(func(h uint64) {
		if b := p.pool.Buf(int(h)); b != nil {
			p.sweepCache.Release(b)
			p.fragDrops.Add(1)
		}
	})
	p.sweepCache.Flush()
}

// txLoop is the TX goroutine of port ps.
func (p *Pipeline) txLoop(ps *portState) {
	defer p.wg.Done()
	defer close(ps.txDone)
	cache := p.pool.NewCache()
	defer cache.Flush()
	batch := make([]*Buf, p.cfg.BatchSize)
	ready := func() bool {
		for _, in := range *ps.inbox.Load() {
			if in.r.Len() > 0 {
				return true
			}
		}
		return false
	}
	next := 0
	for {
		rings := *ps.inbox.Load()
		moved := 0
		for i := range rings {
			in := rings[(next+i)%len(rings)]
			k := in.r.PopBatch(batch)
			if k == 0 {
				if in.dead.Load() && in.r.Len() == 0 {
					p.dropRing(ps, in)
				}
				continue
			}
			moved += k
			p.unadmit(ps, k)
			sent, err := ps.port.Send(batch[:k])
			var bytes uint64
			for _, b := range batch[:sent] {
				bytes += uint64(b.Len())
			}
			ps.tx.packets.Add(uint64(sent))
			ps.tx.bytes.Add(bytes)
			if sent < k {
				ps.tx.errors.Add(uint64(k - sent))
			}
			cache.ReleaseBatch(batch[:k])
			clear(batch[:k])
			if errors.Is(err, ErrPortClosed) {
				return
			}
		}
		if len(rings) > 0 {
			next = (next + 1) % len(rings)
		}
		if moved == 0 {
			select {
			case <-ps.stop:
				return
			default:
			}
			cache.Flush() // an idle port keeps no buffers from the others
			if !ps.waker.Wait(ready, ps.stop) {
				return
			}
		}
	}
}

// dropRing removes an empty ring whose producer is gone from ps's inbox.
func (p *Pipeline) dropRing(ps *portState, dead *inRing) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := *ps.inbox.Load()
	n := make([]*inRing, 0, len(old))
	for _, in := range old {
		if in != dead {
			n = append(n, in)
		}
	}
	ps.inbox.Store(&n)
}

// ring returns the ring from worker w to port dst, making it on first use.
// It returns nil when dst has left the topology.
func (p *Pipeline) ring(w *rxWorker, dst *portState) *Ring {
	if r, ok := w.out[dst]; ok {
		return r
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.topo.Load().ports[dst.owner.Port] != dst {
		return nil // removed meanwhile: never queue for a port that nobody drains
	}
	r, err := NewRing(p.cfg.RingSize)
	if err != nil {
		return nil // the size was validated in NewPipeline
	}
	in := &inRing{r: r, from: w, to: dst}
	n := append(append([]*inRing(nil), *dst.inbox.Load()...), in)
	dst.inbox.Store(&n)
	w.out[dst] = r
	w.outIn = append(w.outIn, in)
	return r
}
