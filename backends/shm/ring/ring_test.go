package ring

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

func newMem(t testing.TB, g Geometry) (*Mem, *Mem) {
	t.Helper()
	m, fd, err := Create(g, 1500)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmap() })
	peer, err := Map(fd)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Unmap() })
	return m, peer
}

func TestRoundTripWrap(t *testing.T) {
	for _, g := range []Geometry{{Slots: 4, FrameCap: 1514}, {Slots: 8, FrameCap: 9018}} {
		m, peer := newMem(t, g)
		if peer.Geometry() != g || peer.MTU() != 1500 {
			t.Fatalf("peer sees %+v mtu %d", peer.Geometry(), peer.MTU())
		}
		p := m.Producer(ToEndpoint)
		c := peer.Consumer(ToEndpoint)
		dst := make([]byte, g.FrameCap)
		seq := 0
		for round := 0; round < 10; round++ {
			free := p.Free()
			if round == 0 && free != g.Slots {
				t.Fatalf("free %d, want %d", free, g.Slots)
			}
			k := min(free, 3)
			for i := range k {
				size := 1 + (seq*977)%g.FrameCap
				s := p.Slot(i)
				for j := range size {
					s[j] = byte(seq + j)
				}
				p.SetLen(i, size)
				seq++
			}
			p.Publish(k)
			n := c.Avail()
			if n != k {
				t.Fatalf("avail %d, want %d", n, k)
			}
			first := seq - k
			for i := range n {
				l := c.Read(i, dst)
				want := 1 + ((first+i)*977)%g.FrameCap
				if l != want || dst[0] != byte(first+i) || dst[l-1] != byte(first+i+l-1) {
					t.Fatalf("frame %d: len %d want %d", first+i, l, want)
				}
			}
			c.Release(n)
		}
	}
}

func TestHostileIndicesAndLengths(t *testing.T) {
	g := Geometry{Slots: 8, FrameCap: 100}
	m, peer := newMem(t, g)
	b := peer.Bytes()
	le := binary.LittleEndian
	// The endpoint claims 1000 frames in ring 1: out of range.
	le.PutUint32(b[offRing1+ringProd:], 1000)
	c := m.Consumer(FromEndpoint)
	if n := c.Avail(); n != 0 || c.BadIndex != 1 {
		t.Fatalf("avail %d bad %d", n, c.BadIndex)
	}
	// Two frames, one with a length beyond the capacity.
	le.PutUint32(b[offRing1+ringProd:], 2)
	base := DataOffset + g.Slots*g.SlotSize()
	le.PutUint32(b[base:], 5000)
	le.PutUint32(b[base+g.SlotSize():], 3)
	copy(b[base+g.SlotSize()+8:], "abc")
	if n := c.Avail(); n != 2 {
		t.Fatalf("avail %d", n)
	}
	dst := make([]byte, 200)
	if l := c.Read(0, dst); l != 0 || c.BadLen != 1 {
		t.Fatalf("bad length read as %d", l)
	}
	if l := c.Read(1, dst); l != 3 || !bytes.Equal(dst[:3], []byte("abc")) {
		t.Fatalf("good frame read as %q", dst[:l])
	}
	c.Release(2)
	// A consumer index out of range makes ring 0 full for usnetd.
	le.PutUint32(b[offRing0+ringCons:], 0x80000000)
	p := m.Producer(ToEndpoint)
	if f := p.Free(); f != 0 || p.BadIndex != 1 {
		t.Fatalf("free %d bad %d", f, p.BadIndex)
	}
	le.PutUint32(b[offRing0+ringCons:], 0)
	if f := p.Free(); f != 8 {
		t.Fatalf("free %d", f)
	}
	// Publishing more than free is capped.
	p.Publish(100)
	if got := le.Uint32(b[offRing0+ringProd:]); got != 8 {
		t.Fatalf("producer index %d", got)
	}
}

// TestSealed: the endpoint cannot shrink the memfd under usnetd's mapping
// (which would make usnetd's reads fault) nor grow it.
func TestSealed(t *testing.T) {
	m, fd, err := Create(Geometry{Slots: 4, FrameCap: 64}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 0); err == nil {
		t.Fatal("ftruncate to 0 worked on a sealed memfd")
	}
	if err := unix.Ftruncate(fd, 1<<30); err == nil {
		t.Fatal("ftruncate to 1 GiB worked on a sealed memfd")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
		t.Fatal("a further seal was accepted")
	}
	// usnetd's mapping still works.
	p := m.Producer(ToEndpoint)
	if p.Free() != 4 {
		t.Fatal("ring not usable")
	}
}

func TestMapRejects(t *testing.T) {
	g := Geometry{Slots: 4, FrameCap: 64}
	for _, tc := range []struct {
		name string
		off  int
		val  uint32
	}{
		{"magic", offMagic, 1}, {"version", offVersion, 2}, {"slots", offSlots, 3},
		{"slot size", offSlotSize, 8}, {"frame cap", offFrameCap, 1 << 20}, {"data offset", offDataOff, 0},
	} {
		m, fd, err := Create(g, 1500)
		if err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint32(m.Bytes()[tc.off:], tc.val)
		if peer, err := Map(fd); err == nil {
			peer.Unmap()
			t.Errorf("%s %d: mapped", tc.name, tc.val)
		}
		m.Unmap()
		unix.Close(fd)
	}
	if _, _, err := Create(Geometry{Slots: 3, FrameCap: 64}, 0); err == nil {
		t.Error("3 slots accepted")
	}
}

func TestWakeup(t *testing.T) {
	m, peer := newMem(t, Geometry{Slots: 4, FrameCap: 64})
	fds, err := NewWakePair()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	c := m.Consumer(FromEndpoint)
	p := peer.Producer(FromEndpoint)
	if c.ArmWakeup() {
		t.Fatal("frames in an empty ring")
	}
	p.Free()
	p.SetLen(0, 1)
	if !p.Publish(1) {
		t.Fatal("need-wakeup not seen")
	}
	if err := Kick(fds[1]); err != nil {
		t.Fatal(err)
	}
	if gone, err := Wait(fds[0], -1); gone || err != nil {
		t.Fatal(gone, err)
	}
	if Drain(fds[0]) {
		t.Fatal("peer gone")
	}
	// Flag cleared by the producer: no second wake-up.
	p.Free()
	p.SetLen(0, 1)
	if p.Publish(1) {
		t.Fatal("woken twice")
	}
	unix.Close(fds[1])
	if gone, _ := Wait(fds[0], 0); !gone {
		t.Fatal("closed peer not seen")
	}
	if !Drain(fds[0]) {
		t.Fatal("closed peer not drained as gone")
	}
}

func closeFD(fd int) { unix.Close(fd) }
