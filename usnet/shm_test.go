package usnet

// Two stacks on shared-memory channels, the two usnetd-side ports joined
// by a pump that plays usnetd's switching (a frame from one goes to the
// other, dropped when its ring is full, as usnetd does).

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/shm"
	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control/client"
	l4 "github.com/usnetd/usnetd/switch"
)

// shmAttacher is a fakeAttacher that hands out a shared-memory channel
// through RequestChannel, as the control client does.
type shmAttacher struct {
	*fakeAttacher
	ep *ring.Endpoint
}

func (s *shmAttacher) RequestChannel(iface string) (client.Channel, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.iface = iface
	ep := s.ep
	s.ep = nil
	return client.Channel{SHM: ep}, nil
}

// pump moves frames from one usnetd-side port to another until it closes.
func pump(from, to *shm.Port, pool *l4.BufPool, wg *sync.WaitGroup) {
	defer wg.Done()
	c := pool.NewCache()
	defer c.Flush()
	bufs := make([]*l4.Buf, 64)
	for {
		ok, err := from.WaitRx(0, nil)
		if err != nil {
			return
		}
		if !ok {
			continue
		}
		have := c.GetBatch(bufs)
		n, err := from.Recv(0, bufs[:have])
		if n > 0 {
			to.Send(bufs[:n])
		}
		c.ReleaseBatch(bufs[:have])
		if err != nil {
			return
		}
	}
}

// shmStackPair is stackPair over shared-memory channels.
func shmStackPair(t testing.TB) (a *Config, b *Config) {
	t.Helper()
	a, fa, b, fb := stackPair(t)
	pool, err := l4.NewBufPool(1024, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ports [2]*shm.Port
	var eps [2]*ring.Endpoint
	for i := range ports {
		p, h, err := shm.New(shm.Options{MTU: 1500, FrameCap: 1518})
		if err != nil {
			t.Fatal(err)
		}
		m, w, err := ring.Files(h.Mem, h.Wake)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		if eps[i], err = ring.OpenEndpoint(m, w); err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go pump(ports[0], ports[1], pool, &wg)
	go pump(ports[1], ports[0], pool, &wg)
	t.Cleanup(func() {
		ports[0].Close()
		ports[1].Close()
		wg.Wait()
	})
	sa, sb := &shmAttacher{fakeAttacher: fa, ep: eps[0]}, &shmAttacher{fakeAttacher: fb, ep: eps[1]}
	a.Attach = func(string) (Attacher, error) { return sa, nil }
	b.Attach = func(string) (Attacher, error) { return sb, nil }
	return a, b
}

// TestSHMTransfer: a TCP transfer of 8 MiB between two stacks over
// shared-memory channels arrives whole, both ways.
func TestSHMTransfer(t *testing.T) {
	a, b := shmStackPair(t)
	ln, err := a.Listen("tcp", ":5001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := make([]byte, 8<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	want := sha256.Sum256(data)
	got := make(chan [32]byte, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer s.Close()
		h := sha256.New()
		io.Copy(h, s)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
		s.Write([]byte("done"))
	}()
	c, err := b.Dial("tcp", "198.18.0.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a.st.link.shm == nil || b.st.link.shm == nil {
		t.Fatal("the stacks are not on shared-memory channels")
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case sum := <-got:
		if sum != want {
			t.Fatal("the data arrived changed")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("transfer did not finish")
	}
	reply, _ := io.ReadAll(c)
	if !bytes.Equal(reply, []byte("done")) {
		t.Fatalf("reply %q", reply)
	}
	t.Logf("sender: %s; receiver: %s", b.st.link.stats.String(), a.st.link.stats.String())
}
