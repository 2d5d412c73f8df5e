package memory

import (
	"sync"
	"sync/atomic"
	"time"

	l4 "github.com/usnetd/usnetd/switch"
)

// Options configure a Port.
type Options struct {
	// Queues is the number of receive queues (RX workers); default 1.
	Queues int
	// Keep makes Send keep a copy of every frame it sends, for Sent.
	// Without it Send only counts (benchmarks).
	Keep bool
	// Poll is how long Recv waits for a frame before it returns 0 frames;
	// default 20 ms.
	Poll time.Duration
	// Window, when set, closes the loop between a generating port and the
	// ports that send: a generator produces a frame only while the window
	// has credit, and every frame any port with the same Window sends
	// gives one back. A source that never overruns its sinks: benchmarks
	// use it to measure what the pipeline sustains without loss.
	Window *Window
}

// Window is the credit shared by a generating port and its sinks.
type Window struct {
	credit  atomic.Int64
	waiting atomic.Int32
	wake    chan struct{}
}

// NewWindow returns a window of n frames in flight.
func NewWindow(n int64) *Window {
	w := &Window{wake: make(chan struct{}, 1)}
	w.credit.Store(n)
	return w
}

// take waits until the window has credit (or timeout) and takes up to n.
func (w *Window) take(n int64, timeout time.Duration, closed <-chan struct{}) int64 {
	for spin := 0; ; spin++ {
		if c := w.credit.Load(); c > 0 {
			n = min(n, c)
			w.credit.Add(-n)
			return n
		}
		if spin < 200 {
			continue // poll briefly, as a NIC's poll-mode driver would
		}
		// Then sleep until a sink gives credit back (the same handshake
		// as l4.Waker: announce, re-check, block).
		w.waiting.Add(1)
		if w.credit.Load() > 0 {
			w.waiting.Add(-1)
			continue
		}
		t := time.NewTimer(timeout)
		select {
		case <-w.wake:
		case <-closed:
		case <-t.C:
		}
		t.Stop()
		w.waiting.Add(-1)
		if c := w.credit.Load(); c <= 0 {
			return 0
		}
	}
}

func (w *Window) give(n int64) {
	w.credit.Add(n)
	if w.waiting.Load() > 0 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Port is an in-memory l4.Port and l4.RxWaiter. Frames go in with Inject or Generate and
// come out through Recv; what the pipeline sends is counted, kept (with
// Options.Keep) and can be held up with Stall, to play a slow endpoint.
// All methods are safe for concurrent use, within the l4.Port contract.
type Port struct {
	name string
	kind l4.PortKind
	opt  Options

	queues []*rxQueue
	closed chan struct{}
	once   sync.Once

	sentMu    sync.Mutex
	sent      [][]byte
	sentCount atomic.Uint64
	sentBytes atomic.Uint64

	stallMu sync.Mutex
	stall   chan struct{} // non-nil while stalled; closed by Unstall
}

type rxQueue struct {
	mu     sync.Mutex
	frames [][]byte
	notify chan struct{}
	timer  *time.Timer // owned by the queue's one Recv caller

	gen atomic.Pointer[generator]
}

// generator produces count frames, cycling through frames, without locks.
type generator struct {
	frames [][]byte
	left   atomic.Int64
	i      int // owned by the queue's one Recv caller
}

// New returns an open port.
func New(name string, kind l4.PortKind, opt Options) *Port {
	if opt.Queues <= 0 {
		opt.Queues = 1
	}
	if opt.Poll <= 0 {
		opt.Poll = 20 * time.Millisecond
	}
	p := &Port{name: name, kind: kind, opt: opt, closed: make(chan struct{})}
	for range opt.Queues {
		p.queues = append(p.queues, &rxQueue{notify: make(chan struct{}, 1)})
	}
	return p
}

// Name implements l4.Port.
func (p *Port) Name() string { return p.name }

// Kind implements l4.Port.
func (p *Port) Kind() l4.PortKind { return p.kind }

// RxQueues implements l4.Port.
func (p *Port) RxQueues() int { return len(p.queues) }

// Inject queues frames for receive queue q (taking ownership of the
// slices). It reports false if the port is closed or q does not exist.
func (p *Port) Inject(q int, frames ...[]byte) bool {
	if q < 0 || q >= len(p.queues) || p.isClosed() {
		return false
	}
	rq := p.queues[q]
	rq.mu.Lock()
	rq.frames = append(rq.frames, frames...)
	rq.mu.Unlock()
	select {
	case rq.notify <- struct{}{}:
	default:
	}
	return true
}

// Generate makes receive queue q produce count frames, cycling through
// frames, as fast as the pipeline takes them: a NIC at line rate.
func (p *Port) Generate(q int, frames [][]byte, count int64) {
	g := &generator{frames: frames}
	g.left.Store(count)
	p.queues[q].gen.Store(g)
	select {
	case p.queues[q].notify <- struct{}{}:
	default:
	}
}

// Generated reports how many frames queue q's generator has still to produce.
func (p *Port) Generated(q int) int64 {
	if g := p.queues[q].gen.Load(); g != nil {
		return g.left.Load()
	}
	return 0
}

// Recv implements l4.Port.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q < 0 || q >= len(p.queues) {
		return 0, l4.ErrPortClosed
	}
	rq := p.queues[q]
	for {
		if p.isClosed() {
			return 0, l4.ErrPortClosed
		}
		if g := rq.gen.Load(); g != nil && g.left.Load() > 0 {
			n := int(min(int64(len(bufs)), g.left.Load()))
			if w := p.opt.Window; w != nil {
				if n = int(w.take(int64(n), p.opt.Poll, p.closed)); n == 0 {
					return 0, nil
				}
			}
			for _, b := range bufs[:n] {
				f := g.frames[g.i]
				g.i++
				if g.i == len(g.frames) {
					g.i = 0
				}
				b.SetLen(copy(b.Data(), f))
			}
			g.left.Add(int64(-n))
			return n, nil
		}
		rq.mu.Lock()
		n := 0
		for n < len(bufs) && n < len(rq.frames) {
			f := rq.frames[n]
			bufs[n].SetLen(copy(bufs[n].Data(), f))
			n++
		}
		if n > 0 {
			rest := copy(rq.frames, rq.frames[n:])
			clear(rq.frames[rest:])
			rq.frames = rq.frames[:rest]
		}
		rq.mu.Unlock()
		if n > 0 {
			return n, nil
		}
		if rq.timer == nil {
			rq.timer = time.NewTimer(p.opt.Poll)
		} else {
			rq.timer.Reset(p.opt.Poll)
		}
		select {
		case <-rq.notify:
			rq.timer.Stop()
		case <-p.closed:
			rq.timer.Stop()
			return 0, l4.ErrPortClosed
		case <-rq.timer.C:
			return 0, nil
		}
	}
}

// WaitRx implements l4.RxWaiter: it waits, holding no buffer, until queue
// q has a frame (or its generator credit), the port closes, or Poll passed.
func (p *Port) WaitRx(q int, idle func()) (bool, error) {
	if q < 0 || q >= len(p.queues) {
		return false, l4.ErrPortClosed
	}
	rq := p.queues[q]
	for {
		if p.isClosed() {
			return false, l4.ErrPortClosed
		}
		if g := rq.gen.Load(); g != nil && g.left.Load() > 0 {
			return true, nil
		}
		rq.mu.Lock()
		n := len(rq.frames)
		rq.mu.Unlock()
		if n > 0 {
			return true, nil
		}
		if idle != nil {
			idle()
			idle = nil
		}
		if rq.timer == nil {
			rq.timer = time.NewTimer(p.opt.Poll)
		} else {
			rq.timer.Reset(p.opt.Poll)
		}
		select {
		case <-rq.notify:
			rq.timer.Stop()
		case <-p.closed:
			rq.timer.Stop()
			return false, l4.ErrPortClosed
		case <-rq.timer.C:
			return false, nil
		}
	}
}

// Send implements l4.Port.
func (p *Port) Send(bufs []*l4.Buf) (int, error) {
	p.stallMu.Lock()
	st := p.stall
	p.stallMu.Unlock()
	if st != nil {
		select {
		case <-st:
		case <-p.closed:
		}
	}
	if p.isClosed() {
		return 0, l4.ErrPortClosed
	}
	var bytes uint64
	for _, b := range bufs {
		bytes += uint64(b.Len())
	}
	if p.opt.Keep {
		p.sentMu.Lock()
		for _, b := range bufs {
			p.sent = append(p.sent, append([]byte(nil), b.Bytes()...))
		}
		p.sentMu.Unlock()
	}
	p.sentBytes.Add(bytes)
	p.sentCount.Add(uint64(len(bufs)))
	if w := p.opt.Window; w != nil {
		w.give(int64(len(bufs)))
	}
	return len(bufs), nil
}

// Stall makes Send block until Unstall or Close: a slow endpoint.
func (p *Port) Stall() {
	p.stallMu.Lock()
	defer p.stallMu.Unlock()
	if p.stall == nil {
		p.stall = make(chan struct{})
	}
}

// Unstall lets a stalled Send go on.
func (p *Port) Unstall() {
	p.stallMu.Lock()
	defer p.stallMu.Unlock()
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
}

// Sent returns copies of the frames sent so far (with Options.Keep).
func (p *Port) Sent() [][]byte {
	p.sentMu.Lock()
	defer p.sentMu.Unlock()
	return append([][]byte(nil), p.sent...)
}

// SentCount returns how many frames were sent.
func (p *Port) SentCount() uint64 { return p.sentCount.Load() }

// SentBytes returns how many bytes were sent.
func (p *Port) SentBytes() uint64 { return p.sentBytes.Load() }

// WaitSent waits until at least n frames were sent or timeout passed, and
// reports whether they were. For tests: the timeout only detects a hang.
func (p *Port) WaitSent(n uint64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.sentCount.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}

// Close implements l4.Port; it is idempotent.
func (p *Port) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *Port) isClosed() bool {
	select {
	case <-p.closed:
		return true
	default:
		return false
	}
}
