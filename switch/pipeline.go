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
//   - One RX worker per receive queue of every port, locked to its OS
//     thread (PipelineConfig.OnThreadStart may pin it). It owns a BufCache,
//     its counters, and the producer end of one Ring per destination it has
//     sent to, made on first use.
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

	// Classify, when set, replaces Parse and Decide: benchmarks use it
	// for a fixed-destination baseline that shows what switching costs.
	Classify func(in Owner, b *Buf) Verdict

	// Tap, when set, gets every switched frame (PCAP_LOG).
	Tap *Tap

	// OnThreadStart is called by every RX worker on its locked OS thread
	// before it receives, e.g. to pin it to a CPU (a system call, which
	// this package leaves to its caller). role is "rx"; port and queue
	// name the worker.
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
	p := &Pipeline{sw: sw, pool: pool, cfg: cfg}
	p.topo.Store(&topology{ports: map[PortID]*portState{}})
	p.workers.Store(&[]*rxWorker{})
	p.sweepCache = pool.NewCache()
	return p, nil
}

// Switch returns the pipeline's switch domain.
func (p *Pipeline) Switch() *Switch { return p.sw }

// Pool returns the pipeline's buffer pool (backends that register its
// memory with a device use it).
func (p *Pipeline) Pool() *BufPool { return p.pool }

// ErrPipelineClosed is returned by AddPort after Close.
var ErrPipelineClosed = errors.New("pipeline closed")

// ErrSecondNIC is returned by AddPort for a second NIC port: a domain has one.
var ErrSecondNIC = errors.New("switch domain has a NIC port already")

// AddPort attaches port and starts its goroutines. It returns the port's
// owner identity, under which rules for it are made.
func (p *Pipeline) AddPort(port Port) (Owner, error) {
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
	for _, ps := range old.list {
		p.stopPort(ps)
	}
	p.wg.Wait()
	// Fragments still held go back to the pool.
	for range FragTimeoutTicks + 1 {
		p.FragSweep()
	}
	p.sweepCache.Flush()
	return nil
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
