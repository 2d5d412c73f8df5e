package usnet

// The link endpoint: Ethernet frames over the packet channel that usnetd
// hands over, one frame per datagram of a socketpair(AF_UNIX, SOCK_DGRAM),
// or, on a shared-memory channel (RequestSHM, the default against a usnetd
// that offers it), through its rings: link_shm.go.
//
// gVisor's link/fdbased would do, but it creates an eventfd per dispatcher
// for stopping and never closes it (gVisor at v0.0.0-20260527191743: the
// stopfd.StopFD of each dispatcher is written on Stop and never closed), so
// every stack torn down would leak a descriptor, and it hands every frame
// from the reading goroutine to processor goroutines. This endpoint reads
// with recvmmsg in one goroutine that blocks in ppoll on the channel and an
// eventfd of its own (closed after the goroutine ends) and delivers to the
// stack inline, and writes with sendmmsg. It is faster here than fdbased:
// see BenchmarkUsnetTCP. (A first version parked in Go's netpoller instead
// of ppoll; on a loaded two-core machine the netpoller's wake-ups came late
// and goodput fell to a quarter.)
//
// Concurrency: one goroutine receives; WritePackets may be called from any
// goroutine and serialises on txMu. A send that meets a full socket buffer
// waits for room at most txWait and then drops the rest of the batch (TCP
// retransmits), so a stalled peer never blocks the stack for long. Close
// takes txMu, so no send uses the descriptor after it is closed.
//
// A channel whose other end is gone (usnetd stopped) tells nothing to its
// reader (a datagram socket gets no hang-up); a send to it fails with
// ECONNREFUSED. The endpoint reports that failure through onLost, and swap
// puts a new channel under the running stack (reattach.go): it stops the
// receiver, replaces the descriptor under txMu and starts the receiver
// again on the new one.

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/usnetd/usnetd/backends/shm/ring"
	"github.com/usnetd/usnetd/control/client"
)

const (
	rxBatch = 32                    // frames per recvmmsg
	txBatch = 64                    // frames per sendmmsg
	txWait  = 20 * time.Millisecond // longest wait for room in the channel
	// channelBuffer is SO_SNDBUF and SO_RCVBUF of our end of the channel.
	// With the default (about 200 KiB) bursts of a TCP window overflow it
	// and TCP retransmits heavily (docs/platform.md).
	channelBuffer = 4 << 20
)

// linkEndpoint implements stack.LinkEndpoint on a datagram socket.
type linkEndpoint struct {
	fd   int            // the channel; -1 once closed or on shm (guarded by txMu)
	shm  *ring.Endpoint // the shared-memory channel, or nil (guarded by txMu)
	poll time.Duration  // how long the shm receiver polls before it sleeps
	gen  uint64         // how many times swap replaced fd (guarded by txMu)
	efd  int            // eventfd that stops the receiver; -1 once closed (guarded by mu)
	mtu  uint32
	addr tcpip.LinkAddress

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	started    bool
	stopOnce   sync.Once
	wg         sync.WaitGroup

	txMu   sync.Mutex
	txHdrs [txBatch]rawfile.MMsgHdr
	txIovs []unix.Iovec
	txPkts []*stack.PacketBuffer     // the shm batch being written (txMu)
	txFill func(i int, b []byte) int // e.fillSlot, made once

	// swapMu orders swap and Close.
	swapMu sync.Mutex
	closed bool // guarded by swapMu
	// onLost, if set before the first send, is called (with txMu held,
	// so it must not block) when a send finds the channel's other end
	// gone; gen says which channel.
	onLost func(gen uint64)

	stats linkStats
}

// linkStats counts frames and what the endpoint dropped; tests and the
// benchmark read them.
type linkStats struct {
	mu                 sync.Mutex
	rxFrames, txFrames uint64
	rxDropped          uint64 // truncated, malformed or not for our MAC
	txDropped          uint64 // no room in the channel within txWait
	txErrors           uint64 // send failed otherwise
	txWaits            uint64 // times a send had to wait for room
}

func (s *linkStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("rx %d frames (%d dropped), tx %d frames (%d dropped, %d errors, %d waits for room)",
		s.rxFrames, s.rxDropped, s.txFrames, s.txDropped, s.txErrors, s.txWaits)
}

func (s *linkStats) add(p *uint64, n int) {
	s.mu.Lock()
	*p += uint64(n)
	s.mu.Unlock()
}

// newLinkEndpoint takes ownership of ch: one end of a SOCK_DGRAM
// socketpair, or a shared-memory channel.
func newLinkEndpoint(ch client.Channel, mac net.HardwareAddr, mtu uint32) (*linkEndpoint, error) {
	fd := -1
	if ch.SHM == nil {
		var err error
		if fd, err = channelFD(ch.UDS); err != nil {
			return nil, err
		}
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		ch.Close()
		return nil, err
	}
	e := &linkEndpoint{fd: fd, shm: ch.SHM, poll: DefaultChannelPoll, efd: efd, mtu: mtu, addr: tcpip.LinkAddress(mac)}
	e.txFill = e.fillSlot
	return e, nil
}

// channelFD takes ownership of f, a channel end, and returns a
// non-blocking descriptor of it with the channel's buffer sizes.
func channelFD(f *os.File) (int, error) {
	defer f.Close()
	setChannelBuffers(f)
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// setChannelBuffers sets SO_SNDBUF and SO_RCVBUF of a channel end to
// channelBuffer, forcing past the sysctl limits where the process may
// (CAP_NET_ADMIN), else as far as they allow.
func setChannelBuffers(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], channelBuffer) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], channelBuffer)
			}
		}
	})
}

func (e *linkEndpoint) MTU() uint32                        { return e.mtu }
func (e *linkEndpoint) SetMTU(mtu uint32)                  { e.mtu = mtu }
func (e *linkEndpoint) MaxHeaderLength() uint16            { return header.EthernetMinimumSize }
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress     { return e.addr }
func (e *linkEndpoint) SetLinkAddress(a tcpip.LinkAddress) { e.addr = a }
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType {
	return header.ARPHardwareEther
}
func (e *linkEndpoint) SetOnCloseAction(func()) {}

func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired
}

// Attach starts the receiver; Attach(nil), on NIC removal, tells it to
// stop but does not wait: the stack calls it holding its own lock, which a
// receiver that is delivering a frame at that moment may be waiting for
// (ipv4's HandlePacket looks up the NIC's name). Close, after the stack's
// Wait, waits for the receiver and closes the channel.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	if d == nil {
		e.dispatcher = nil
		e.mu.Unlock()
		e.stop()
		return
	}
	start := !e.started
	e.started = true
	e.dispatcher = d
	if start {
		e.wg.Add(1)
		if fd, shm := e.rxChan(); shm != nil {
			go e.receiveSHM(shm)
		} else {
			go e.receive(fd)
		}
	}
	e.mu.Unlock()
}

// rxChan is the channel for a receiver about to start.
func (e *linkEndpoint) rxChan() (int, *ring.Endpoint) {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	return e.fd, e.shm
}

func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait does not wait: the stack's Wait calls it holding the stack's lock,
// which the receiver may need to deliver its last frame. Close waits for
// the receiver, after the stack's Wait.
func (e *linkEndpoint) Wait() {}

// stop wakes the receiver to make it return (the eventfd stays readable);
// after Close it does nothing.
func (e *linkEndpoint) stop() {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.efd >= 0 {
		var one = [8]byte{1}
		unix.Write(e.efd, one[:])
	}
}

// Close stops the receiver, waits for it and closes the channel and the
// eventfd. It may be called more than once.
func (e *linkEndpoint) Close() {
	e.swapMu.Lock()
	defer e.swapMu.Unlock()
	e.closed = true
	e.stopOnce.Do(func() {
		e.stop()
		e.wg.Wait()
		e.mu.Lock()
		unix.Close(e.efd)
		e.efd = -1
		e.mu.Unlock()
		e.txMu.Lock()
		if e.fd >= 0 {
			unix.Close(e.fd)
		}
		if e.shm != nil {
			e.shm.Close()
		}
		e.fd, e.shm = -1, nil
		e.txMu.Unlock()
	})
}

// swap replaces the channel by ch (taking ownership of it) under the
// running stack: the receiver stops, the old channel is closed, and the
// receiver starts again on ch if the stack is attached. Senders wait on
// txMu meanwhile. After Close it closes ch and returns net.ErrClosed.
func (e *linkEndpoint) swap(ch client.Channel) error {
	e.swapMu.Lock()
	defer e.swapMu.Unlock()
	if e.closed {
		ch.Close()
		return net.ErrClosed
	}
	fd := -1
	if ch.SHM == nil {
		var err error
		if fd, err = channelFD(ch.UDS); err != nil {
			return err
		}
	}
	e.stop()
	e.wg.Wait()
	var cnt [8]byte
	unix.Read(e.efd, cnt[:]) // clear the stop signal (efd is open: not closed yet)
	e.txMu.Lock()
	old, oldSHM := e.fd, e.shm
	e.fd, e.shm = fd, ch.SHM
	e.gen++
	e.txMu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
	if oldSHM != nil {
		oldSHM.Close()
	}
	e.mu.Lock()
	if e.dispatcher != nil {
		e.wg.Add(1)
		if ch.SHM != nil {
			go e.receiveSHM(ch.SHM)
		} else {
			go e.receive(fd)
		}
	}
	e.mu.Unlock()
	return nil
}

// generation is the number of swaps so far.
func (e *linkEndpoint) generation() uint64 {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	return e.gen
}

// AddHeader writes the Ethernet header.
func (e *linkEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader consumes the Ethernet header.
func (e *linkEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	b, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if ok {
		pkt.NetworkProtocolNumber = header.Ethernet(b).Type()
	}
	return ok
}

// receive reads batches of frames and delivers them, until it is stopped
// or the channel fails (the peer closed it).
func (e *linkEndpoint) receive(fd int) {
	defer e.wg.Done()
	size := int(e.mtu) + header.EthernetMinimumSize
	var (
		hdrs  [rxBatch]rawfile.MMsgHdr
		iovs  [rxBatch]unix.Iovec
		views [rxBatch]*buffer.View
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
				iovs[i] = rawfile.IovecFromBytes(views[i].AsSlice())
				hdrs[i].Msg.Iov = &iovs[i]
				hdrs[i].Msg.SetIovlen(1)
			}
			hdrs[i].Msg.Flags = 0
			hdrs[i].Len = 0
		}
		// fd stays open while this goroutine runs: Close and swap wait
		// for it. So does efd.
		n, errno := rawfile.BlockingRecvMMsgUntilStopped(e.efd, fd, hdrs[:])
		if n < 0 || (errno != 0 && errno != unix.EINTR) {
			return
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
			l := int(hdrs[i].Len)
			if hdrs[i].Msg.Flags&unix.MSG_TRUNC != 0 || l < header.EthernetMinimumSize {
				v.Release()
				e.stats.add(&e.stats.rxDropped, 1)
				continue
			}
			e.deliver(d, v, l)
		}
		e.stats.add(&e.stats.rxFrames, n)
	}
}

// deliver hands the received frame v (its first l bytes, at least an
// Ethernet header) to the stack, or drops it when it is unicast to another
// MAC. It takes v over.
func (e *linkEndpoint) deliver(d stack.NetworkDispatcher, v *buffer.View, l int) {
	dst := header.Ethernet(v.AsSlice()).DestinationAddress()
	if dst != e.addr && dst[0]&1 == 0 { // unicast to someone else
		v.Release()
		e.stats.add(&e.stats.rxDropped, 1)
		return
	}
	v.CapLength(l)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	if e.ParseHeader(pkt) {
		d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
	}
	pkt.DecRef()
}

// WritePackets sends the frames in batches with sendmmsg. It does not take
// references: the caller releases pkts.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	if e.shm != nil {
		return e.writeSHM(pkts.AsSlice())
	}
	if e.fd < 0 {
		return 0, &tcpip.ErrClosedForSend{}
	}
	all := pkts.AsSlice()
	sent := 0
	for sent < len(all) {
		batch := all[sent:min(len(all), sent+txBatch)]
		e.txIovs = e.txIovs[:0]
		var starts [txBatch + 1]int
		for i, pkt := range batch {
			starts[i] = len(e.txIovs)
			for _, s := range pkt.AsSlices() {
				if len(s) > 0 {
					e.txIovs = append(e.txIovs, rawfile.IovecFromBytes(s))
				}
			}
		}
		starts[len(batch)] = len(e.txIovs)
		for i := range batch {
			h := &e.txHdrs[i]
			*h = rawfile.MMsgHdr{}
			if n := starts[i+1] - starts[i]; n > 0 {
				h.Msg.Iov = &e.txIovs[starts[i]]
				h.Msg.SetIovlen(n)
			}
		}
		n, err := e.send(e.txHdrs[:len(batch)])
		sent += n
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// send sends all of hdrs, or drops what finds no room within txWait. txMu
// is held.
func (e *linkEndpoint) send(hdrs []rawfile.MMsgHdr) (int, tcpip.Error) {
	done := 0
	var deadline time.Time
	for done < len(hdrs) {
		n, errno := rawfile.NonBlockingSendMMsg(e.fd, hdrs[done:])
		if errno == 0 {
			done += n
			e.stats.add(&e.stats.txFrames, n)
			continue
		}
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN, unix.ENOBUFS:
			if deadline.IsZero() {
				e.stats.add(&e.stats.txWaits, 1)
				deadline = time.Now().Add(txWait)
			}
			left := time.Until(deadline)
			if left <= 0 {
				e.stats.add(&e.stats.txDropped, len(hdrs)-done)
				return len(hdrs), nil // dropped, as a full NIC queue would
			}
			ts := unix.NsecToTimespec(left.Nanoseconds())
			pe := rawfile.PollEvent{FD: int32(e.fd), Events: unix.POLLOUT}
			rawfile.BlockingPoll(&pe, 1, &ts)
		case unix.ECONNREFUSED, unix.EPIPE, unix.ENOTCONN:
			if e.onLost != nil {
				e.onLost(e.gen)
			}
			return done, &tcpip.ErrClosedForSend{}
		default:
			e.stats.add(&e.stats.txErrors, len(hdrs)-done)
			return done, tcpip.TranslateErrno(errno)
		}
	}
	return done, nil
}
