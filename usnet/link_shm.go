package usnet

// The link endpoint on a shared-memory channel (backends/shm/ring): the
// receiver copies batches of frames out of the to-endpoint ring with no
// system call while frames keep coming, polls the ring for up to
// linkEndpoint.poll when it runs dry, and only then sets need-wakeup and
// sleeps in poll(2) on the wake-up socket and the stop eventfd.
// WritePackets copies each frame's pieces straight into the from-endpoint
// ring's slots (one copy, no sendmmsg) and publishes the batch with one
// store; usnetd is woken only when it asked. A full ring is waited on for
// at most txWait (usnetd drains it without being told), then the rest of
// the batch is dropped, as on the datagram channel. usnetd closing its end
// (it exited) shows at once as ErrClosed and goes to onLost.

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control/client"
)

// DefaultChannelPoll is how long the receiver of a shared-memory channel
// polls its ring before it sleeps (Config.ChannelPoll). BENCHMARKS.md has
// the measurement it was chosen by.
const DefaultChannelPoll = 10 * time.Microsecond

// receiveSHM is receive for a shared-memory channel.
func (e *linkEndpoint) receiveSHM(ep *ring.Endpoint) {
	defer e.wg.Done()
	size := int(e.mtu) + header.EthernetMinimumSize
	var (
		views [rxBatch]*buffer.View
		bufs  [rxBatch][]byte
		lens  [rxBatch]int
	)
	defer func() {
		for _, v := range views {
			if v != nil {
				v.Release()
			}
		}
	}()
	for {
		for i := range views {
			if views[i] == nil {
				views[i] = buffer.NewViewSize(size)
				bufs[i] = views[i].AsSlice()
			}
		}
		n, err := ep.Recv(bufs[:], lens[:])
		if err != nil {
			e.lostSHM(ep)
			return
		}
		if n == 0 {
			stopped, err := ep.WaitStop(e.poll, -1, e.efd)
			if stopped {
				return
			}
			if err != nil {
				e.lostSHM(ep)
				return
			}
			continue
		}
		e.mu.RLock()
		d := e.dispatcher
		e.mu.RUnlock()
		if d == nil {
			return
		}
		for i := 0; i < n; i++ {
			v := views[i]
			views[i] = nil
			l := lens[i]
			if l < header.EthernetMinimumSize {
				v.Release()
				e.stats.add(&e.stats.rxDropped, 1)
				continue
			}
			e.deliver(d, v, l)
		}
		e.stats.add(&e.stats.rxFrames, n)
	}
}

// lostSHM reports that usnetd closed the channel ep, if ep is still the
// endpoint's channel.
func (e *linkEndpoint) lostSHM(ep *ring.Endpoint) {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	if e.shm == ep && e.onLost != nil {
		e.onLost(e.gen)
	}
}

// fillSlot writes the i-th frame of the batch into a slot: its length, or
// 0 if it does not fit (the caller drops it).
func (e *linkEndpoint) fillSlot(i int, b []byte) int {
	n := 0
	for _, s := range e.txPkts[i].AsSlices() {
		if n+len(s) > len(b) {
			return 0
		}
		n += copy(b[n:], s)
	}
	return n
}

// writeSHM is WritePackets on a shared-memory channel; txMu is held.
func (e *linkEndpoint) writeSHM(all []*stack.PacketBuffer) (int, tcpip.Error) {
	ep := e.shm
	capy := ep.FrameCap()
	sent := 0
	var deadline time.Time
	for sent < len(all) {
		if sz := all[sent].Size(); sz == 0 || sz > capy {
			e.stats.add(&e.stats.txErrors, 1)
			sent++
			continue
		}
		e.txPkts = all[sent:]
		n, err := ep.SendWith(len(all)-sent, e.txFill)
		e.txPkts = nil
		sent += n
		e.stats.add(&e.stats.txFrames, n)
		if err != nil {
			if e.onLost != nil {
				e.onLost(e.gen)
			}
			return sent, &tcpip.ErrClosedForSend{}
		}
		if n > 0 || sent == len(all) {
			continue
		}
		// The ring is full, or the next frame is too big (the loop
		// drops it above). usnetd drains the ring without being told:
		// wait for it a little.
		if deadline.IsZero() {
			e.stats.add(&e.stats.txWaits, 1)
			deadline = time.Now().Add(txWait)
		} else if time.Now().After(deadline) {
			e.stats.add(&e.stats.txDropped, len(all)-sent)
			return len(all), nil // dropped, as a full NIC queue would
		}
		time.Sleep(20 * time.Microsecond)
	}
	return sent, nil
}

// requestChannel asks att for a packet channel: a shared-memory one first
// where att can (the control client: RequestChannel, which falls back to
// RequestUDS itself) unless uds is set, else RequestUDS.
func requestChannel(att Attacher, iface string, uds bool) (client.Channel, error) {
	if r, ok := att.(interface {
		RequestChannel(string) (client.Channel, error)
	}); ok && !uds {
		return r.RequestChannel(iface)
	}
	f, err := att.RequestUDS(iface)
	if err != nil {
		return client.Channel{}, err
	}
	return client.Channel{UDS: f}, nil
}

// peerOfChannel is peerOf for either kind of channel: a shared-memory
// channel's wake-up socket pair was made by usnetd, as a datagram
// channel's socket pair.
func peerOfChannel(ch client.Channel) int {
	if ch.SHM == nil {
		return peerOf(ch.UDS)
	}
	fd, err := unix.FcntlInt(uintptr(ch.SHM.WakeFD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return noPeer
	}
	f := os.NewFile(uintptr(fd), "usnetd-shm-wake")
	defer f.Close()
	return peerOf(f)
}
