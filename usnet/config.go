package usnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/usnetd/usnetd/control/wire"
)

// DefaultSocketPath is where usnetd's control socket is unless
// Config.SocketPath, USNET_SOCKET or SOCKET_PATH says otherwise
// (wire.DefaultSocketPath).
const DefaultSocketPath = wire.DefaultSocketPath

// Config describes one userspace stack: the NIC it shares through usnetd,
// the control socket, and the stack's MAC and addresses. Open makes a
// Stack of it that stays attached until Stack.Close.
//
// A Config's own Listen, ListenPacket and Dial are a thin layer over the
// same code with an implicit stack: made on the first of them and shared
// by every socket of the Config; when the last of them is closed, the
// stack is torn down and the client detaches from usnetd (DeleteClient).
// A later call makes a new stack.
//
// Zero fields take their value from the environment, read when the stack
// is made, and else from the defaults below. A Config must not be copied
// after first use.
type Config struct {
	// Interface is the NIC usnetd shares. Env USNET_INTERFACE. Required.
	Interface string
	// SocketPath is usnetd's control socket. Env USNET_SOCKET, then
	// SOCKET_PATH; default DefaultSocketPath.
	SocketPath string
	// MAC is the stack's MAC address. Nil: "passthru", the NIC's own MAC,
	// as usnet_sockets did: the stack shares MAC and IP with the kernel and
	// usnetd tells their traffic apart by port. Env USNET_MAC: "passthru"
	// or a MAC.
	MAC net.HardwareAddr
	// Addrs are the stack's addresses with their prefix lengths. Nil:
	// "passthru", the NIC's addresses, and the kernel's routes through the
	// NIC (read with netlink in the calling thread's network namespace).
	// Static addresses get on-link routes for their prefixes and default
	// routes through Gateways. Env USNET_IP: "passthru" or a comma
	// separated list such as "198.18.0.2/24,2001:db8::2/64".
	Addrs []netip.Prefix
	// Gateways are the default routers of static Addrs, at most one per
	// address family. Env USNET_GATEWAY, comma separated.
	Gateways []netip.Addr
	// MTU of the stack. Zero: the MTU that usnetd says the channel
	// carries (QueryStatus), else the NIC's MTU (passthru) or 1500. Env
	// USNET_MTU.
	MTU int
	// Loopback mirrors the stack onto the kernel's loopback, as
	// usnet_sockets did, so that local programs reach the service: every
	// listener also listens on 127.0.0.1 (::1 for tcp6/udp6) through the
	// kernel, and dials to loopback addresses go through the kernel.
	// Without it such dials fail with ErrLoopback. Env USNET_LOOPBACK=true.
	Loopback bool
	// Attach connects to usnetd. Nil: DialControl, the control client.
	// Tests put a fake here. It is called again, with the same socket
	// path, when the stack attaches anew after usnetd restarted.
	Attach func(socketPath string) (Attacher, error)
	// Reattached, if set, is called (from the stack's supervisor
	// goroutine) each time the stack attached again after usnetd went away
	// and came back, with nil when every open listener's rule was
	// registered again, else an error joining those usnetd refused (a
	// port that another client took meanwhile: such a listener gets no
	// new connections). It must not block for long.
	Reattached func(err error)
	// NoSHM makes the stack ask usnetd for a Unix datagram channel
	// (RequestUDS) instead of a shared-memory one (RequestSHM, the
	// default; a usnetd without it gets RequestUDS anyway).
	NoSHM bool
	// ChannelPoll is how long the receiver of a shared-memory channel
	// polls its ring before it sleeps until usnetd wakes it: CPU for
	// latency. Zero: DefaultChannelPoll; negative: never poll.
	ChannelPoll time.Duration

	mu sync.Mutex
	st *netStack // nil while no socket is open

	// localPortRange reports the kernel's ip_local_port_range; nil reads
	// /proc/sys/net/ipv4/ip_local_port_range. Tests replace it.
	localPortRange func() (lo, hi uint16, err error)
	// fdbased uses gVisor's link/fdbased instead of linkEndpoint (for the
	// benchmark that compares them).
	fdbased bool
}

// Default is the Config of the package-level functions: every field from
// the environment. The package-level functions are Default's methods:
// its implicit stack lives while one of their sockets is open. A program
// that wants one stack for its whole life uses Open.
var Default = &Config{}

// Listen announces on the local network address of Default's stack; see
// Config.Listen.
func Listen(network, address string) (net.Listener, error) {
	return Default.Listen(network, address)
}

// ListenPacket announces on the local network address of Default's stack;
// see Config.ListenPacket.
func ListenPacket(network, address string) (net.PacketConn, error) {
	return Default.ListenPacket(network, address)
}

// Dial connects to the address through Default's stack; see Config.Dial.
func Dial(network, address string) (net.Conn, error) {
	return Default.DialContext(context.Background(), network, address)
}

// DialContext connects to the address through Default's stack; see
// Config.DialContext.
func DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return Default.DialContext(ctx, network, address)
}

// Errors.
var (
	ErrNoInterface = errors.New("usnet: no interface: set Config.Interface or USNET_INTERFACE")
	ErrLoopback    = errors.New("usnet: loopback addresses are reached through the kernel only with Config.Loopback (USNET_LOOPBACK=true)")
	ErrNoAddress   = errors.New("usnet: the stack has no such address")
	ErrNoPort      = errors.New("usnet: no free port outside the kernel's ip_local_port_range")
)

// route is one row of the stack's routing table.
type route struct {
	dst netip.Prefix
	gw  netip.Addr // invalid: on-link
}

// resolved is a Config with every value filled in.
type resolved struct {
	iface      string
	socketPath string
	mac        net.HardwareAddr
	addrs      []netip.Prefix
	routes     []route
	mtu        int
	mtuSet     bool // Config.MTU or USNET_MTU: the channel's MTU does not replace it
	loopback   bool
}

func getenv(keys ...string) string {
	for _, k := range keys {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ""
}

// resolve fills in the Config's zero fields from the environment and, for
// passthru, from the NIC.
func (c *Config) resolve() (resolved, error) {
	r := resolved{
		iface:      c.Interface,
		socketPath: c.SocketPath,
		mac:        c.MAC,
		addrs:      c.Addrs,
		mtu:        c.MTU,
		loopback:   c.Loopback,
	}
	gws := c.Gateways
	if r.iface == "" {
		r.iface = getenv("USNET_INTERFACE")
	}
	if r.iface == "" {
		return r, ErrNoInterface
	}
	if r.socketPath == "" {
		r.socketPath = getenv("USNET_SOCKET", "SOCKET_PATH")
	}
	if r.socketPath == "" {
		r.socketPath = DefaultSocketPath
	}
	if r.mac == nil {
		if v := getenv("USNET_MAC"); v != "" && v != "passthru" {
			mac, err := net.ParseMAC(v)
			if err != nil || len(mac) != 6 {
				return r, fmt.Errorf("usnet: USNET_MAC=%q: not \"passthru\" or an Ethernet MAC", v)
			}
			r.mac = mac
		}
	}
	if r.addrs == nil {
		if v := getenv("USNET_IP"); v != "" && v != "passthru" {
			for _, s := range strings.Split(v, ",") {
				p, err := netip.ParsePrefix(strings.TrimSpace(s))
				if err != nil {
					return r, fmt.Errorf("usnet: USNET_IP=%q: %q is not an address with a prefix length like 198.18.0.2/24", v, s)
				}
				r.addrs = append(r.addrs, p)
			}
		}
	}
	if gws == nil {
		if v := getenv("USNET_GATEWAY"); v != "" {
			for _, s := range strings.Split(v, ",") {
				a, err := netip.ParseAddr(strings.TrimSpace(s))
				if err != nil {
					return r, fmt.Errorf("usnet: USNET_GATEWAY=%q: %q is not an IP address", v, s)
				}
				gws = append(gws, a)
			}
		}
	}
	if r.mtu == 0 {
		if v := getenv("USNET_MTU"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 576 || n > 65535 {
				return r, fmt.Errorf("usnet: USNET_MTU=%q: not a number in 576..65535", v)
			}
			r.mtu = n
		}
	}
	r.mtuSet = r.mtu != 0
	if !r.loopback {
		if v := getenv("USNET_LOOPBACK"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return r, fmt.Errorf("usnet: USNET_LOOPBACK=%q: not true or false", v)
			}
			r.loopback = b
		}
	}

	passthru := r.mac == nil || r.addrs == nil || r.mtu == 0
	if passthru {
		nic, err := net.InterfaceByName(r.iface)
		switch {
		case err == nil:
			if r.mac == nil {
				r.mac = nic.HardwareAddr
			}
			if r.mtu == 0 {
				r.mtu = nic.MTU
			}
			if r.addrs == nil {
				if r.addrs, err = interfaceAddrs(nic); err == nil {
					r.routes, err = kernelRoutes(nic.Index)
				}
				if err != nil {
					return r, fmt.Errorf("usnet: passthru addresses of %s: %w", r.iface, err)
				}
			}
		case r.mac == nil || r.addrs == nil:
			return r, fmt.Errorf("usnet: passthru needs the interface %q in this network namespace: %w", r.iface, err)
		default:
			r.mtu = 1500
		}
	}
	if len(r.mac) != 6 {
		return r, fmt.Errorf("usnet: %s has no Ethernet MAC; set Config.MAC", r.iface)
	}
	if len(r.addrs) == 0 {
		return r, fmt.Errorf("usnet: %s has no IP address; set Config.Addrs", r.iface)
	}
	if c.Addrs != nil || r.routes == nil {
		// Static addresses: on-link prefixes and the gateways.
		r.routes = nil
		for _, p := range r.addrs {
			r.routes = append(r.routes, route{dst: p.Masked()})
		}
		for _, gw := range gws {
			def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if gw.Is6() {
				def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			r.routes = append(r.routes, route{dst: def, gw: gw})
		}
	}
	return r, nil
}

// interfaceAddrs lists the NIC's addresses with their prefixes.
func interfaceAddrs(nic *net.Interface) ([]netip.Prefix, error) {
	as, err := nic.Addrs()
	if err != nil {
		return nil, err
	}
	var ps []netip.Prefix
	for _, a := range as {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ones, _ := ipn.Mask.Size()
		ps = append(ps, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return ps, nil
}
