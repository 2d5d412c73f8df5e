package afxdp

import (
	"bytes"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// Unit tests of the ring protocol and of receive/Send on rings laid out in
// ordinary memory, with the test playing the kernel's side. They need no
// privileges.

// fakeOff is a ring layout like the kernel's: indices on their own words,
// descriptors after them.
var fakeOff = unix.XDPRingOffset{Producer: 0, Consumer: 64, Flags: 128, Desc: 192}

func fakeMem(size uint32, elem uint64) []byte {
	return make([]byte, fakeOff.Desc+uint64(size)*elem)
}

// kernelSide is the other end of a fake ring.
type kernelSide struct{ r *ring }

func (k kernelSide) prod() uint32      { return atomic.LoadUint32(k.r.producer) }
func (k kernelSide) cons() uint32      { return atomic.LoadUint32(k.r.consumer) }
func (k kernelSide) setProd(v uint32)  { atomic.StoreUint32(k.r.producer, v) }
func (k kernelSide) setCons(v uint32)  { atomic.StoreUint32(k.r.consumer, v) }
func (k kernelSide) setFlags(v uint32) { atomic.StoreUint32(k.r.flags, v) }

func TestRingIndices(t *testing.T) {
	var r umemRing
	if !r.init(fakeMem(8, 8), fakeOff, 8, true) {
		t.Fatal("init")
	}
	k := kernelSide{&r.ring}
	if got := r.free(100); got != 8 {
		t.Fatalf("free(100) on an empty ring of 8 = %d", got)
	}
	for i := range uint32(8) {
		r.addrs[(r.local+i)&r.mask] = uint64(i)
	}
	r.submit(8)
	if k.prod() != 8 || r.free(1) != 0 || r.pending() != 8 {
		t.Fatalf("full ring: prod %d free %d pending %d", k.prod(), r.free(1), r.pending())
	}
	k.setCons(3) // the kernel took three
	if got := r.free(5); got != 3 {
		t.Fatalf("free after the kernel took 3 = %d", got)
	}
	for i := range uint32(3) {
		r.addrs[(r.local+i)&r.mask] = uint64(100 + i)
	}
	r.submit(3)
	// Slots 0..2 were overwritten: the indices wrapped.
	if r.addrs[0] != 100 || r.addrs[2] != 102 || r.addrs[3] != 3 || k.prod() != 11 {
		t.Fatalf("after wrap: %v, prod %d", r.addrs, k.prod())
	}
	// Free-running uint32 indices survive their own wrap-around.
	var c descRing
	if !c.init(fakeMem(4, 16), fakeOff, 4, false) {
		t.Fatal("init")
	}
	kc := kernelSide{&c.ring}
	c.local, c.cached = ^uint32(0)-1, ^uint32(0)-1
	kc.setCons(c.local)
	kc.setProd(c.local + 3) // wraps past 0
	if got := c.avail(10); got != 3 {
		t.Fatalf("avail across the uint32 wrap = %d", got)
	}
	c.release(3)
	if kc.cons() != 1 {
		t.Fatalf("consumer after wrap = %d", kc.cons())
	}
	if c.needWakeup() {
		t.Fatal("needWakeup without the flag")
	}
	kc.setFlags(unix.XDP_RING_NEED_WAKEUP)
	if !c.needWakeup() {
		t.Fatal("needWakeup with the flag")
	}
	// init refuses layouts that do not fit the mapping.
	var bad umemRing
	if bad.init(fakeMem(8, 8)[:100], fakeOff, 8, true) {
		t.Fatal("init accepted descriptors outside the mapping")
	}
}

// fakeXSK is an xsk on ordinary memory with frames frames of 2048 bytes
// for RX (pre-filled as newXSK does) and txFrames for TX.
func fakeXSK(t *testing.T, frames, txFrames uint32) *xsk {
	t.Helper()
	s := &xsk{fd: -1, frame: 2048, rxFrames: frames, txFrames: txFrames, maxTx: 2048}
	s.umem = make([]byte, uint64(frames+txFrames)*s.frame)
	ok := s.fill.init(fakeMem(pow2(frames), 8), fakeOff, pow2(frames), true) &&
		s.rx.init(fakeMem(pow2(frames), 16), fakeOff, pow2(frames), false) &&
		s.tx.init(fakeMem(8, 16), fakeOff, 8, true) &&
		s.comp.init(fakeMem(8, 8), fakeOff, 8, false)
	if !ok {
		t.Fatal("init")
	}
	s.spare = make([]uint64, 0, frames)
	for i := range frames {
		s.fill.addrs[i] = uint64(i) * s.frame
	}
	s.fill.submit(frames)
	for i := range txFrames {
		s.txFree = append(s.txFree, uint64(frames+i)*s.frame)
	}
	return s
}

// kernelRecv plays the kernel's copy-mode receive: take the next fill
// entry, write the frame at the kernel's headroom, post an RX descriptor.
// It publishes the RX producer but, as xsk_flush does in between, not yet
// the fill consumer: flush does that.
type kernelRecv struct {
	s            *xsk
	fillCons, rx uint32
}

func (k *kernelRecv) deliver(t *testing.T, frame []byte) uint64 {
	t.Helper()
	s := k.s
	if k.fillCons == atomic.LoadUint32(s.fill.producer) {
		t.Fatal("fake kernel: fill ring empty")
	}
	base := s.fill.addrs[k.fillCons&s.fill.mask]
	k.fillCons++
	addr := base + unix.XDP_PACKET_HEADROOM
	copy(s.umem[addr:], frame)
	s.rx.descs[k.rx&s.rx.mask] = unix.XDPDesc{Addr: addr, Len: uint32(len(frame))}
	k.rx++
	atomic.StoreUint32(s.rx.producer, k.rx)
	return base
}

func (k *kernelRecv) flush() { atomic.StoreUint32(k.s.fill.consumer, k.fillCons) }

func TestReceiveRecyclesAndKeepsSpares(t *testing.T) {
	s := fakeXSK(t, 4, 0)
	k := &kernelRecv{s: s}
	pool, err := l4.NewBufPool(8, 64)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, 8)
	pool.NewCache().GetBatch(bs)

	frames := [][]byte{[]byte("first frame"), []byte("second"), bytes.Repeat([]byte{7}, 100), []byte("fourth")}
	var bases []uint64
	for _, f := range frames {
		bases = append(bases, k.deliver(t, f))
	}
	// The fill ring is full from our side (the kernel has not published its
	// consumer), so the frames wait in spare instead of being lost.
	n := s.receive(bs)
	if n != 3 {
		t.Fatalf("receive = %d, want 3 (one frame is longer than the 64-byte buffers)", n)
	}
	for i, want := range [][]byte{frames[0], frames[1], frames[3]} {
		if !bytes.Equal(bs[i].Bytes(), want) {
			t.Errorf("buffer %d = %q, want %q", i, bs[i].Bytes(), want)
		}
	}
	if s.c.rxOversize.Load() != 1 || s.c.rxFrames.Load() != 3 {
		t.Errorf("oversize %d, frames %d", s.c.rxOversize.Load(), s.c.rxFrames.Load())
	}
	if len(s.spare) != 4 {
		t.Fatalf("%d spare frames, want 4", len(s.spare))
	}
	k.flush()
	if n := s.receive(bs); n != 0 {
		t.Fatalf("receive on an empty ring = %d", n)
	}
	if len(s.spare) != 0 || atomic.LoadUint32(s.fill.producer) != 8 {
		t.Fatalf("after flush: %d spare, fill producer %d", len(s.spare), atomic.LoadUint32(s.fill.producer))
	}
	// Every frame came back, at its frame boundary (headroom masked off).
	back := map[uint64]bool{}
	for i := uint32(4); i < 8; i++ {
		back[s.fill.addrs[i&s.fill.mask]] = true
	}
	for _, b := range bases {
		if !back[b] {
			t.Errorf("frame %#x not back in the fill ring: %v", b, s.fill.addrs)
		}
	}

	// A descriptor outside our RX frames is counted and never recycled.
	s.rx.descs[k.rx&s.rx.mask] = unix.XDPDesc{Addr: uint64(s.rxFrames) * s.frame, Len: 10}
	k.rx++
	atomic.StoreUint32(s.rx.producer, k.rx)
	if n := s.receive(bs); n != 0 || s.c.rxBadDesc.Load() != 1 || len(s.spare) != 0 {
		t.Fatalf("bad descriptor: n %d, bad %d, spare %v", n, s.c.rxBadDesc.Load(), s.spare)
	}
}

func TestSendQueuesReclaimsAndRefuses(t *testing.T) {
	s := fakeXSK(t, 4, 4)
	p := &Port{socks: []*xsk{s}, txs: s, efd: -1}
	k := kernelSide{&s.tx.ring}
	pool, err := l4.NewBufPool(8, 4096)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]*l4.Buf, 6)
	pool.NewCache().GetBatch(bs)
	for i, b := range bs {
		b.SetLen(copy(b.Data(), []byte{byte(i), 1, 2, 3}))
	}
	bs[1].SetLen(3000) // longer than a frame: refused
	bs[2].SetLen(0)    // empty: refused
	n, err := p.Send(bs)
	if err != nil || n != 4 {
		t.Fatalf("Send = %d, %v; want 4 (6 frames, 2 refused, 4 TX frames)", n, err)
	}
	if s.c.txDropped.Load() != 2 || s.c.txFull.Load() != 0 || k.prod() != 4 {
		t.Fatalf("dropped %d full %d prod %d", s.c.txDropped.Load(), s.c.txFull.Load(), k.prod())
	}
	for i, want := range []byte{0, 3, 4, 5} {
		d := s.tx.descs[i]
		if d.Len != 4 || s.umem[d.Addr] != want {
			t.Errorf("descriptor %d: %+v holds %d, want frame %d", i, d, s.umem[d.Addr], want)
		}
	}
	// No TX frame is free until the kernel completes some.
	if n, _ := p.Send(bs[:1]); n != 0 || s.c.txFull.Load() != 1 {
		t.Fatalf("Send without free frames = %d, full %d", n, s.c.txFull.Load())
	}
	// The kernel sends two and completes them (completion addresses may
	// carry an offset; reclaim masks them).
	k.setCons(2)
	s.comp.addrs[0] = s.tx.descs[0].Addr
	s.comp.addrs[1] = s.tx.descs[1].Addr + 256
	atomic.StoreUint32(s.comp.producer, 2)
	if n, _ := p.Send(bs[3:6]); n != 2 {
		t.Fatalf("Send after 2 completions = %d, want 2", n)
	}
	if got := atomic.LoadUint32(s.comp.consumer); got != 2 {
		t.Fatalf("completion consumer %d", got)
	}
	if err := p.closeForTest(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(bs[:1]); err != l4.ErrPortClosed {
		t.Fatalf("Send after close: %v", err)
	}
}

// closeForTest marks a fake port closed without touching its fake rings.
func (p *Port) closeForTest() error {
	p.closed.Store(true)
	return nil
}
