package neightap

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/firewall"
	"github.com/usnetd/usnetd/internal/netorder"
	l4 "github.com/usnetd/usnetd/switch"
)

// Port is the NIC's AF_XDP port with one more receive queue, the last:
// copies of the ARP, EAPOL and IPv6 neighbour-discovery frames that arrive
// on the NIC.
//
// The XDP classifier passes those frames to the kernel (it needs them,
// and XDP cannot clone a frame), so they never reach the AF_XDP sockets,
// and without this queue no endpoint would ever see an ARP reply: a
// userspace stack that shares the NIC's IP and MAC asks "who has
// 198.18.0.2?", the answer goes to the shared MAC, and only the kernel
// gets it. The original mirrored these frames to every port (netmap's host
// ring and pipes); here an AF_PACKET socket on the NIC, filtered to ARP,
// EAPOL and ICMPv6 types 133-137 and blind to what the kernel itself sends,
// reads the kernel's copy of each, and the switch floods it to the
// endpoints as a frame from the NIC (never back out of the NIC, and not
// to the kernel, which has it already).
//
// In the metrics and in usnetctl status this queue is the NIC port's
// queue number RxQueues()-1: a NIC with one queue shows two. It has its own RX worker, which sleeps
// in the netpoller while there is nothing to read; with CPUS it takes a
// place in the list like any worker.
type Port struct {
	l4.Port           // the AF_XDP port: queues 0..n-1 and TX
	n       int       // the AF_XDP port's queues; queue n is the tap
	f       *os.File  // the AF_PACKET socket, non-blocking, in the netpoller
	once    sync.Once // Close
}

// Filter accepts ARP, EAPOL and ICMPv6 neighbour discovery (router
// solicitation and advertisement, neighbour solicitation and
// advertisement, redirect: types 133 to 137, right after the IPv6 header
// as NDP sends them) and nothing else; never a frame that the host path
// put into the NIC's ingress (marked firewall.HostMark): the switch has
// switched those already.
var Filter = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdMark},                         // 0: skb->mark
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 10, Jf: 0, K: firewall.HostMark}, // 1: the host path's: reject
	{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 12},                                // 2: EtherType
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 7, Jf: 0, K: 0x0806},             // 3: ARP: accept
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 6, Jf: 0, K: 0x888e},             // 4: EAPOL: accept
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 6, K: 0x86dd},             // 5: not IPv6: reject
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 14 + 6},                            // 6: next header
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 4, K: 58},                 // 7: not ICMPv6: reject
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 14 + 40},                           // 8: ICMPv6 type
	{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, Jt: 0, Jf: 2, K: 133},                // 9: below 133: reject
	{Code: unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, Jt: 1, Jf: 0, K: 137},                // 10: above 137: reject
	{Code: unix.BPF_RET | unix.BPF_K, K: 1 << 16},                                         // 11: accept
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},                                               // 12: reject
}

// skfAdMark is the classic BPF load offset of skb->mark (SKF_AD_OFF +
// SKF_AD_MARK).
const skfAdMark = uint32(0xfffff000 + 20)

// New opens the tap on the link ifindex, in the calling thread's network
// namespace, and wraps port with it: the tap is queue port.RxQueues().
func New(port l4.Port, ifindex int) (*Port, error) {
	// Protocol 0 receives nothing until bind: the filter is in place
	// before the first frame.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("neighbour tap: AF_PACKET socket: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(Filter)), Filter: &Filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("neighbour tap: SO_ATTACH_FILTER: %w", err)
	}
	// What the kernel sends is not what arrived on the NIC: the kernel's
	// own ARP, NDP and EAPOL reach the endpoints through the host path
	// (the egress program's copies, read from the host path's TAP).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("neighbour tap: PACKET_IGNORE_OUTGOING: %w", err)
	}
	all := netorder.Htons(unix.ETH_P_ALL)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("neighbour tap: bind: %w", err)
	}
	return &Port{Port: port, n: port.RxQueues(), f: os.NewFile(uintptr(fd), "neighbour-tap")}, nil
}

// RxQueues is the AF_XDP port's queues and the tap.
func (p *Port) RxQueues() int { return p.n + 1 }

// Recv implements l4.Port: the AF_XDP queues as they are, and on the last
// queue one frame of the tap, waiting up to l4.RecvTimeout for it.
func (p *Port) Recv(q int, bufs []*l4.Buf) (int, error) {
	if q != p.n {
		return p.Port.Recv(q, bufs)
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	if err := p.f.SetReadDeadline(time.Now().Add(l4.RecvTimeout)); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return 0, l4.ErrPortClosed
		}
		return 0, err
	}
	b := bufs[0]
	n, err := p.f.Read(b.Data())
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, nil
	case errors.Is(err, os.ErrClosed):
		return 0, l4.ErrPortClosed
	case err != nil:
		return 0, fmt.Errorf("neighbour tap: %w", err)
	}
	b.SetLen(n)
	return 1, nil
}

// Close closes the tap and the AF_XDP port; it is idempotent.
func (p *Port) Close() error {
	var err error
	p.once.Do(func() {
		p.f.Close() // wakes a Recv in the netpoller
		err = p.Port.Close()
	})
	return err
}
