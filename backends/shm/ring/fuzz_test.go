package ring

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"
)

// FuzzConsumer drives usnetd's side of a channel (the Consumer of ring 1,
// the Producer of ring 0) while a goroutine playing a hostile endpoint
// writes the fuzzer's words all over the shared pages: indices, flags,
// lengths, frame bytes, the header. The consumer must not panic or read
// out of bounds, must hand out only frames within the capacity, and must
// account for every slot it consumed as a frame or a counted drop.
func FuzzConsumer(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 3, 0, 0, 0})
	f.Add(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, uint32(offRing1+ringProd)), 0xffffffff))
	f.Add(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, uint32(DataOffset+8*128)), 5000))
	f.Add(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, uint32(offRing0+ringCons)), 7))
	f.Fuzz(func(t *testing.T, script []byte) {
		g := Geometry{Slots: 8, FrameCap: 100}
		m, fd, err := Create(g, 1500)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Unmap()
		closeFD(fd)
		b := m.Bytes()
		// The script: pairs of (offset, value) words, applied in a loop.
		type write struct{ off, val uint32 }
		var ws []write
		for i := 0; i+8 <= len(script); i += 8 {
			off := binary.LittleEndian.Uint32(script[i:]) % uint32(len(b)-4) &^ 3
			ws = append(ws, write{off, binary.LittleEndian.Uint32(script[i+4:])})
		}
		if len(ws) == 0 {
			return
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; !stop.Load(); k++ {
				w := ws[k%len(ws)]
				atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[w.off])), w.val+uint32(k/len(ws)))
			}
		}()
		c := m.Consumer(FromEndpoint)
		p := m.Producer(ToEndpoint)
		dst := make([]byte, 64) // shorter than the capacity: long frames are drops
		var good, consumed uint64
		for range 2000 {
			n := c.Avail()
			if n < 0 || n > g.Slots {
				t.Fatalf("avail %d", n)
			}
			for i := range n {
				l := c.Read(i, dst)
				if l < 0 || l > len(dst) {
					t.Fatalf("frame of %d bytes", l)
				}
				if l > 0 {
					good++
				}
			}
			c.Release(n)
			consumed += uint64(n)
			free := p.Free()
			if free < 0 || free > g.Slots {
				t.Fatalf("free %d", free)
			}
			for i := range free {
				s := p.Slot(i)
				s[0] = 1
				s[len(s)-1] = 1
				p.SetLen(i, 1)
			}
			p.Publish(free)
			c.ArmWakeup()
		}
		stop.Store(true)
		wg.Wait()
		if good+c.BadLen != consumed {
			t.Fatalf("%d frames + %d dropped != %d consumed", good, c.BadLen, consumed)
		}
	})
}
