package control

// The server of the control socket.
//
// Endpoints and channels. An endpoint is a client: its socket address and
// its process (the PID the kernel's credentials name, verified against the
// Request*). Its first RequestUDS or RequestSHM makes it; each gives it one
// packet channel (a backends/uds port, or for RequestSHM a backends/shm
// port, attached to the NIC's pipeline), up to MaxChannelsPerClient, all on
// the NIC of the first. Both requests go through the same checks and limits
// (requestChannel); a channel is a channel, whatever its kind. As in the original,
// where each channel was an endpoint of its own and AddMatch, RemoveMatch
// and DeleteClient acted on the oldest channel with the client's address:
//   - AddMatch needs a channel (the original sent no answer without one; we
//     answer "ER"), and its rule belongs to the endpoint's oldest channel:
//     matching frames go there;
//   - each channel learns the flows it sends itself;
//   - when a channel goes, its rules go with it (the oldest channel's are
//     the registered ones); the next oldest receives later AddMatch rules.
// Deliberately unlike the original, DeleteClient removes the whole
// endpoint, every channel and rule, not just the oldest channel, and a
// RequestUDS for a second NIC from the same endpoint is refused (use a
// second client socket): a client that says it is gone is gone.
//
// Limits. Clients (endpoints), channels and rules are limited per client,
// per user (uid) and in total (ServerConfig); a request beyond any of them
// is answered ER, logged and counted (Refused). Rules are counted where
// they are made: every channel's rules count against its endpoint's
// l4.RuleQuota, inside its user's, inside the interface's, and
// Table.Insert refuses one beyond any of them, a rule the data path learns
// included (its frame is dropped as rule_limit).
//
// An endpoint is gone within a second (CheckInterval) when it sends
// DeleteClient, when its process exits (its pidfd becomes readable), or,
// channel by channel, when a channel's peer end is closed (the uds port
// notices it); its rules leave the table with its ports.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/backends/shm"
	"github.com/usnetd/usnetd/backends/uds"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/sockdiag"
	l4 "github.com/usnetd/usnetd/switch"
)

// Interface is one claimed NIC: its switch domain, with the NIC port
// attached already.
type Interface struct {
	Name     string
	Pipeline *l4.Pipeline
	Backend  string       // for QueryStatus, e.g. "afxdp"
	XDPMode  string       // for QueryStatus; "" when not XDP
	MTU      func() int   // for QueryStatus: the MTU the channels carry now; nil: not said
	Addrs    []netip.Addr // the interface's addresses: QueryUsedPorts lists a kernel socket bound to the wildcard address under each
	// Granted are the addresses that endpoints may use besides Addrs
	// (ENDPOINT_ADDRS). AddMatch takes a local address among Addrs and
	// Granted only.
	Granted []netip.Addr
	// EndpointPorts, if set, is the kernel side's copy of the endpoints'
	// rules (the eBPF firewall of afxdp and afpacket): each rule AddMatch
	// registers goes there before the answer is OK (if it cannot, the
	// answer is ER), and leaves it with the rule. nil where the switch
	// alone keeps the kernel out (macvtap) and in tests without one.
	EndpointPorts EndpointPorts
}

// EndpointPorts is told the rules endpoints hold, so that the kernel can
// neither get their frames nor send from their flows.
type EndpointPorts interface {
	AddEndpointPort(k l4.Key) error
	RemoveEndpointPort(k l4.Key) error
}

// ServerConfig configures a Server. Zero values mean the defaults.
type ServerConfig struct {
	// SocketPath is the control socket: an absolute path or "@name" for an
	// abstract socket; default DefaultSocketPath.
	SocketPath string
	// AllowGID, if HasAllowGID, is the group that may use the socket
	// besides root (and the server's own user).
	AllowGID    uint32
	HasAllowGID bool
	// MaxRulesPerClient limits the rules of one endpoint, registered and
	// learned; default 1024. MaxChannelsPerClient limits its channels;
	// default 16. MaxClients limits the endpoints; default 1024.
	MaxRulesPerClient    int
	MaxChannelsPerClient int
	MaxClients           int
	// Per user (uid) and in total: MaxClientsPerUID (default 256),
	// MaxChannels (default 2048), MaxChannelsPerUID (default 1024),
	// MaxRules per interface (default 262144) and MaxRulesPerUID per
	// interface (default 65536).
	MaxClientsPerUID  int
	MaxChannels       int
	MaxChannelsPerUID int
	MaxRules          int
	MaxRulesPerUID    int
	// PrivilegedPorts: a rule for a local port below it needs uid 0 or
	// CAP_NET_BIND_SERVICE; default 1024.
	PrivilegedPorts uint16
	// Interfaces are the claimed NICs, by name as RequestUDS names them.
	Interfaces []Interface
	// KernelPorts lists the kernel's sockets, whose ports no endpoint may
	// take (but its own reservations, see the policy); KernelPortsOn the
	// ones on one protocol and local port. Default: sock_diag dumps
	// (internal/sockdiag) in the network namespace of the thread that
	// calls NewServer. Tests fake KernelPorts; KernelPortsOn then
	// defaults to filtering its answer.
	KernelPorts   func() ([]sockdiag.Socket, error)
	KernelPortsOn func(proto uint8, port uint16) ([]sockdiag.Socket, error)
	// KernelTCPFlow lists the kernel's TCP sockets that a rule for the one
	// connection local ↔ remote collides with (the listeners on local's
	// port and the socket of exactly that pair): what an AddMatch with a
	// full TCP 5-tuple (a connect) checks, a lookup instead of a dump of
	// every connection. Default: sockdiag's TCPFlow with KernelPorts'
	// default; with KernelPorts faked, KernelPortsOn's answer.
	KernelTCPFlow func(local, remote netip.AddrPort) ([]sockdiag.Socket, error)
	// Channel configures the channels' ports (buffer size, poll and probe
	// intervals); Name and OnPeerClosed are the server's.
	Channel uds.Options
	// SHM configures the shared-memory channels (RequestSHM); Name,
	// FrameCap, MTU and OnPeerClosed are the server's.
	SHM shm.Options
	// NoSHM switches RequestSHM off: it is answered "ER" like an unknown
	// request, as by a usnetd without it (clients fall back to RequestUDS).
	NoSHM bool
	// SHMMemory bounds the memory of all shared-memory channels, each
	// counted as shm.Charge (its to-endpoint ring and header); 0: no
	// bound. A RequestSHM beyond it is answered "ER" and counted
	// (RefusedSHMMemory), and the client falls back to RequestUDS, whose
	// frames wait in the pipeline's buffers. usnetd gives it a quarter of
	// MEMORY_LIMIT.
	SHMMemory int64
	// CheckInterval is how often the server looks for endpoints whose
	// process exited or whose channel closed, and for flow rules that
	// ended; default 200 ms.
	CheckInterval time.Duration
	// FlowIdle and FlowLinger end a rule that a client registered with a
	// full 5-tuple (a connection's rule) with its flow: FlowIdle after its
	// last frame either way (default 90 s, the original's housekeeping
	// period), FlowLinger after the last frame once a TCP FIN passed each
	// way or a RST from the remote (default 2 s); a RST from the endpoint
	// ends it at once. See flows.go.
	FlowIdle   time.Duration
	FlowLinger time.Duration
	// Log receives what clients did wrong (warn) and attach and detach
	// (info).
	Log zerolog.Logger
	// Version is reported by QueryStatus.
	Version string

	procDir string // "/proc"; tests may point it elsewhere
}

func (c *ServerConfig) fill() {
	if c.SocketPath == "" {
		c.SocketPath = DefaultSocketPath
	}
	if c.MaxRulesPerClient <= 0 {
		c.MaxRulesPerClient = 1024
	}
	if c.MaxChannelsPerClient <= 0 {
		c.MaxChannelsPerClient = 16
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 1024
	}
	if c.MaxClientsPerUID <= 0 {
		c.MaxClientsPerUID = 256
	}
	if c.MaxChannels <= 0 {
		c.MaxChannels = 2048
	}
	if c.MaxChannelsPerUID <= 0 {
		c.MaxChannelsPerUID = 1024
	}
	if c.MaxRules <= 0 {
		c.MaxRules = 262144
	}
	if c.MaxRulesPerUID <= 0 {
		c.MaxRulesPerUID = 65536
	}
	if c.PrivilegedPorts == 0 {
		c.PrivilegedPorts = 1024
	}
	if c.KernelPorts != nil && c.KernelPortsOn == nil {
		all := c.KernelPorts
		c.KernelPortsOn = func(proto uint8, port uint16) ([]sockdiag.Socket, error) {
			ss, err := all()
			var on []sockdiag.Socket
			for _, so := range ss {
				if so.Proto == proto && so.Local.Port() == port {
					on = append(on, so)
				}
			}
			return on, err
		}
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = 200 * time.Millisecond
	}
	if c.FlowIdle <= 0 {
		c.FlowIdle = 90 * time.Second
	}
	if c.FlowLinger <= 0 {
		c.FlowLinger = 2 * time.Second
	}
	if c.procDir == "" {
		c.procDir = "/proc"
	}
}

// Server serves the control socket. Make one with NewServer, run it with
// Serve, stop it with Close (or by cancelling Serve's context).
type Server struct {
	cfg    ServerConfig
	log    zerolog.Logger
	sock   *controlSocket
	rc     syscall.RawConn
	euid   uint32
	ifaces map[string]*ifaceState
	order  []*ifaceState

	mu        sync.Mutex // guards everything below, and every table change the server makes
	endpoints map[epKey]*endpoint
	uids      map[uint32]*uidState
	channels  int   // of all endpoints
	shmBytes  int64 // the shared-memory channels' Charge, against SHMMemory
	nextID    uint64
	closed    bool

	refused [numRefusals]atomic.Uint64 // by Refusal (Refused)

	kick      chan struct{} // wakes the janitor
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup
	serving   atomic.Bool
	diag      *sockdiag.Conn // the default KernelPorts', closed by Close
}

type ifaceState struct {
	Interface
	table *l4.Table
	rules *l4.RuleQuota // MaxRules: every endpoint's rules on this interface
	// goneTooBig counts the oversized frames of the channels that went
	// (ChannelDrops adds the live ones'), under the server's lock.
	goneTooBig uint64
	goneSHM    shm.Stats             // the same for the shared-memory channels' counters
	watch      *l4.FlowWatch         // the switch's, for flows
	flows      map[l4.Key]*flowState // the endpoints' 5-tuple rules (flows.go)
}

// gone keeps the counters of a channel that went.
func (ifc *ifaceState) gone(ch *channel) {
	ifc.goneTooBig += ch.rxTooBig()
	st := ch.shmStats()
	g := &ifc.goneSHM
	g.RxFrames += st.RxFrames
	g.RxBadIndex += st.RxBadIndex
	g.RxBadLen += st.RxBadLen
	g.TxFrames += st.TxFrames
	g.TxRingFull += st.TxRingFull
	g.TxTooBig += st.TxTooBig
	g.TxBadIndex += st.TxBadIndex
	g.Wakeups += st.Wakeups
}

// uidState is what one user's endpoints hold.
type uidState struct {
	clients, channels int
	rules             map[*ifaceState]*l4.RuleQuota // MaxRulesPerUID, per interface
}

// Refusal is a limit that a request ran into.
type Refusal int

// The limits, as Refused counts them.
const (
	RefusedClients Refusal = iota
	RefusedClientsPerUID
	RefusedChannels
	RefusedChannelsPerUID
	RefusedChannelsPerClient
	RefusedRules     // AddMatch beyond a rule limit (learned ones are the data path's rule_limit drops)
	RefusedAddress   // AddMatch for a local address that endpoints may not use
	RefusedSHMMemory // RequestSHM beyond SHMMemory (the client falls back to RequestUDS)
	numRefusals
)

var refusalNames = [numRefusals]string{"clients", "clients_per_uid", "channels", "channels_per_uid", "channels_per_client", "rules", "address", "shm_memory"}

// String is the limit's metric label.
func (r Refusal) String() string { return refusalNames[r] }

// Refused returns how many requests each limit refused, by Refusal.String.
func (s *Server) Refused() map[string]uint64 {
	m := make(map[string]uint64, numRefusals)
	for r := range numRefusals {
		m[r.String()] = s.refused[r].Load()
	}
	return m
}

func (s *Server) refuse(r Refusal) { s.refused[r].Add(1) }

// epKey identifies an endpoint: the client's address and its process.
type epKey struct {
	addr clientAddr
	pid  int32
}

type endpoint struct {
	id       uint64
	key      epKey
	uid, gid uint32
	pidfd    int
	ifc      *ifaceState
	channels []*channel // oldest first; channels[0] owns the registered rules
	rules    []l4.Key   // registered by AddMatch
	quota    *l4.RuleQuota
	log      zerolog.Logger
}

type channel struct {
	port   l4.Port // *uds.Port or *shm.Port
	kind   string  // "uds" or "shm"
	owner  l4.Owner
	charge int64 // counted in Server.shmBytes (shm channels)
}

// peerClosed is closed once the channel's port noticed its peer gone.
func (ch *channel) peerClosed() <-chan struct{} {
	switch p := ch.port.(type) {
	case *uds.Port:
		return p.PeerClosed()
	case *shm.Port:
		return p.PeerClosed()
	}
	return nil
}

// rxTooBig is the uds channel's count of oversized datagrams.
func (ch *channel) rxTooBig() uint64 {
	if p, ok := ch.port.(*uds.Port); ok {
		return p.Stats().RxTooBig
	}
	return 0
}

// shmStats are the shared-memory channel's counters (zero for uds).
func (ch *channel) shmStats() shm.Stats {
	if p, ok := ch.port.(*shm.Port); ok {
		return p.Stats()
	}
	return shm.Stats{}
}

// NewServer binds the control socket (see listenControl for what happens
// to a file already at the path) and returns a server that is not yet
// serving.
func NewServer(cfg ServerConfig) (*Server, error) {
	var diag *sockdiag.Conn
	if cfg.KernelPorts == nil {
		runtime.LockOSThread() // the namespace of this thread
		c, err := sockdiag.Open()
		runtime.UnlockOSThread()
		if err != nil {
			return nil, fmt.Errorf("control: %w", err)
		}
		diag = c
		cfg.KernelPorts = c.Sockets
		if cfg.KernelPortsOn == nil {
			cfg.KernelPortsOn = c.SocketsOnPort
		}
		if cfg.KernelTCPFlow == nil {
			cfg.KernelTCPFlow = c.TCPFlow
		}
	}
	s, err := newServer(cfg)
	if err != nil {
		if diag != nil {
			diag.Close()
		}
		return nil, err
	}
	s.diag = diag
	return s, nil
}

func newServer(cfg ServerConfig) (*Server, error) {
	cfg.fill()
	addr, err := parseSocketPath(cfg.SocketPath)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Log,
		euid:      uint32(os.Geteuid()),
		ifaces:    map[string]*ifaceState{},
		endpoints: map[epKey]*endpoint{},
		uids:      map[uint32]*uidState{},
		kick:      make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	for _, in := range cfg.Interfaces {
		if in.Pipeline == nil {
			return nil, fmt.Errorf("control: interface %q has no pipeline", in.Name)
		}
		if _, dup := s.ifaces[in.Name]; dup {
			return nil, fmt.Errorf("control: interface %q twice", in.Name)
		}
		st := &ifaceState{Interface: in, table: in.Pipeline.Switch().Table, rules: l4.NewRuleQuota(cfg.MaxRules, nil),
			watch: l4.NewFlowWatch(flowEvents), flows: map[l4.Key]*flowState{}}
		s.ifaces[in.Name] = st
		s.order = append(s.order, st)
	}
	sock, err := listenControl(addr, cfg.AllowGID, cfg.HasAllowGID)
	if err != nil {
		return nil, err
	}
	for _, st := range s.order {
		st.Pipeline.Switch().SetFlowWatch(st.watch)
	}
	rc, err := sock.file.SyscallConn()
	if err != nil {
		sock.close()
		return nil, err
	}
	s.sock, s.rc = sock, rc
	return s, nil
}

// Addr is the socket path, or "@name" for an abstract socket.
func (s *Server) Addr() string { return s.sock.addr.String() }

// Serve answers clients until ctx is done or Close is called, and then
// closes the server (see Close). It returns nil after Close and ctx's
// error after a cancel.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("control: Serve called twice")
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	s.log.Info().Str("socket", s.Addr()).Msg("control socket ready")
	s.wg.Add(2)
	go s.readLoop()
	go s.janitor()
	select {
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	case <-s.done:
		s.wg.Wait()
		return nil
	}
}

// Close stops serving, detaches every endpoint (its channels leave the
// pipelines, its rules the tables) and removes the socket file. It is
// idempotent.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.sock.file.Close() // wakes the reader
		s.wg.Wait()
		s.mu.Lock()
		s.closed = true
		for _, ep := range s.sortedEndpoints() {
			s.removeEndpoint(ep, "usnetd stops")
		}
		for _, ifc := range s.order {
			ifc.Pipeline.Switch().SetFlowWatch(nil)
		}
		s.mu.Unlock()
		if cerr := s.sock.close(); err == nil && !errors.Is(cerr, os.ErrClosed) {
			err = cerr
		}
		if s.diag != nil {
			s.diag.Close()
		}
	})
	return err
}

// readLoop receives and handles one message after the other.
func (s *Server) readLoop() {
	defer s.wg.Done()
	buf := make([]byte, wire.MaxMessageSize+1)
	oob := make([]byte, 1024)
	for {
		var r received
		var rerr error
		err := s.rc.Read(func(fd uintptr) bool {
			r, rerr = recvmsg(int(fd), buf, oob)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			if !errors.Is(rerr, unix.EINTR) {
				s.log.Error().Err(rerr).Msg("control socket: recvmsg")
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		s.handle(&r, buf)
	}
}

// answer is what a request gets back: data (nil: nothing), with file the
// channel end to hand over; undo runs when it could not be sent.
type answer struct {
	data []byte
	file *os.File
	more *os.File // a second descriptor (RequestSHM)
	undo func()
}

var (
	answerER = answer{data: []byte(wire.RawER)}
	answerOK = answer{data: []byte(wire.RawOK)}
)

// handle checks one received datagram and acts on it.
func (s *Server) handle(r *received, buf []byte) {
	defer func() {
		if r.pidfd >= 0 {
			unix.Close(r.pidfd)
		}
	}()
	log := s.log.With().Str("client", r.from.String()).Logger()
	if r.cred != nil {
		log = log.With().Int32("pid", r.cred.Pid).Uint32("uid", r.cred.Uid).Logger()
	}
	if !r.named {
		log.Warn().Msg("message from an unbound socket: nowhere to answer; ignored")
		return
	}
	body := buf[:min(r.n, len(buf))]
	if r.rights > 0 {
		log.Warn().Int("fds", r.rights).Msg("the client sent file descriptors; closed them")
	}
	var a answer
	switch {
	case r.flags&unix.MSG_TRUNC != 0 || r.n > wire.MaxMessageSize:
		log.Warn().Int("bytes", r.n).Int("limit", wire.MaxMessageSize).Msg("message too long")
		a = answerIfDue(body)
	case r.flags&unix.MSG_CTRUNC != 0:
		log.Warn().Msg("control data of the message truncated")
		a = answerIfDue(body)
	case r.cred == nil:
		log.Warn().Msg("message without credentials")
		a = answerIfDue(body)
	default:
		a = s.process(message{from: r.from, cred: *r.cred, pidfd: &r.pidfd, body: body}, log)
	}
	if a.data == nil {
		return
	}
	var oob []byte
	if a.file != nil && a.more != nil {
		oob = unix.UnixRights(int(a.file.Fd()), int(a.more.Fd()))
	} else if a.file != nil {
		oob = unix.UnixRights(int(a.file.Fd()))
	}
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = sendmsg(int(fd), a.data, oob, r.from)
		return true // never wait for a client
	})
	if a.file != nil {
		a.file.Close()
	}
	if a.more != nil {
		a.more.Close()
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		log.Warn().Err(err).Msg("cannot answer the client")
		if a.undo != nil {
			s.mu.Lock()
			a.undo()
			s.mu.Unlock()
		}
	}
}

// answerIfDue is "ER" unless the message is one that gets no answer
// (RemoveMatch, DeleteClient): a client waits for an answer to everything
// else, and an unexpected "ER" would be taken for the answer to its next
// request.
func answerIfDue(body []byte) answer {
	switch wire.PeekType(body) {
	case "RemoveMatch", "DeleteClient":
		return answer{}
	}
	return answerER
}

// message is a request with what the kernel says about its sender.
type message struct {
	from  clientAddr
	cred  unix.Ucred
	pidfd *int // SCM_PIDFD or -1; set it to -1 to keep it
	body  []byte
}

// process decodes and carries out one request and returns the answer. It
// never panics on any input (FuzzProcess).
func (s *Server) process(m message, log zerolog.Logger) answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return answerIfDue(m.body)
	}
	if !s.allowed(m.cred) {
		log.Warn().Msg("access denied: not root and not in ALLOW_GID")
		return answerIfDue(m.body)
	}
	req, err := wire.DecodeRequest(m.body)
	if err != nil {
		log.Warn().Err(err).Msg("malformed message")
		return answerIfDue(m.body)
	}
	key := epKey{addr: m.from, pid: m.cred.Pid}
	switch v := req.(type) {
	case wire.RequestUDS:
		return s.requestChannel(m, key, v.Interface, v.PID, "uds", log)
	case wire.RequestSHM:
		if s.cfg.NoSHM {
			log.Warn().Msg("RequestSHM: shared-memory channels are off")
			return answerER
		}
		return s.requestChannel(m, key, v.Interface, v.PID, "shm", log)
	case wire.RequestNetmapPipe:
		log.Info().Str("interface", v.Interface).Msg("RequestNetmapPipe: no netmap here; answering ER")
		return answerER
	case wire.AddMatch:
		return s.addMatch(key, v.Match, log)
	case wire.RemoveMatch:
		s.removeMatch(key, v.Match, log)
		return answer{}
	case wire.DeleteClient:
		ep := s.endpoints[key]
		if ep == nil {
			log.Warn().Msg("DeleteClient from a client without channel")
			return answer{}
		}
		s.removeEndpoint(ep, "DeleteClient")
		return answer{}
	case wire.QueryUsedPorts:
		return answer{data: s.usedPorts(log)}
	case wire.QueryPortsInUse:
		return answer{data: s.portsInUse(v.Protocol, log)}
	case wire.QueryStatus:
		return answer{data: s.statusBytes(log)}
	}
	log.Warn().Str("type", req.Type()).Msg("unhandled request")
	return answerER
}

// allowed is the access check of every message: root, the server's own
// user, or (with ALLOW_GID) a member of that group. The socket file's mode
// does the same for path sockets; an abstract socket has no mode, so this
// is what guards it.
func (s *Server) allowed(c unix.Ucred) bool {
	if c.Uid == 0 || c.Uid == s.euid {
		return true
	}
	if !s.cfg.HasAllowGID {
		return false
	}
	if c.Gid == s.cfg.AllowGID {
		return true
	}
	st, err := readProcStatus(s.cfg.procDir, c.Pid)
	return err == nil && slices.Contains(st.Groups, s.cfg.AllowGID) && st.Tgid == c.Pid
}

// requestChannel carries out RequestUDS (kind "uds") and RequestSHM
// (kind "shm"): the same checks and limits, a channel of the kind.
func (s *Server) requestChannel(m message, key epKey, iface string, pid int32, kind string, log zerolog.Logger) answer {
	req := "RequestUDS"
	if kind == "shm" {
		req = "RequestSHM"
	}
	log = log.With().Str("request", req).Str("interface", iface).Int32("claimed_pid", pid).Logger()
	ifc := s.ifaces[iface]
	if ifc == nil {
		log.Info().Msg(req + " for an interface usnetd does not claim")
		return answerER
	}
	// The PID in the message must be the sender's process or one of its
	// threads.
	st, err := readProcStatus(s.cfg.procDir, pid)
	if err != nil || st.Tgid != m.cred.Pid {
		log.Warn().Err(err).Int32("tgid", st.Tgid).Msg(req + ": the PID is not a thread of the sending process")
		return answerER
	}
	ep := s.endpoints[key]
	if ep != nil {
		if ep.ifc != ifc {
			log.Warn().Str("endpoint_interface", ep.ifc.Name).Msg(req + " for a second interface: use another client socket")
			return answerER
		}
		if len(ep.channels) >= s.cfg.MaxChannelsPerClient {
			s.refuse(RefusedChannelsPerClient)
			log.Warn().Int("limit", s.cfg.MaxChannelsPerClient).Msg(req + ": channel limit of the client reached")
			return answerER
		}
	}
	u := s.uids[m.cred.Uid]
	if ep != nil {
		u = s.uids[ep.uid]
	}
	if ep == nil {
		if len(s.endpoints) >= s.cfg.MaxClients {
			s.refuse(RefusedClients)
			log.Warn().Int("limit", s.cfg.MaxClients).Msg(req + ": client limit reached")
			return answerER
		}
		if u != nil && u.clients >= s.cfg.MaxClientsPerUID {
			s.refuse(RefusedClientsPerUID)
			log.Warn().Int("limit", s.cfg.MaxClientsPerUID).Msg(req + ": client limit of the user reached")
			return answerER
		}
	}
	if s.channels >= s.cfg.MaxChannels {
		s.refuse(RefusedChannels)
		log.Warn().Int("limit", s.cfg.MaxChannels).Msg(req + ": channel limit of usnetd reached")
		return answerER
	}
	if u != nil && u.channels >= s.cfg.MaxChannelsPerUID {
		s.refuse(RefusedChannelsPerUID)
		log.Warn().Int("limit", s.cfg.MaxChannelsPerUID).Msg(req + ": channel limit of the user reached")
		return answerER
	}
	var shmOpt shm.Options
	var charge int64
	if kind == "shm" {
		shmOpt = s.cfg.SHM
		shmOpt.FrameCap = ifc.Pipeline.Pool().Stats().BufSize
		if ifc.MTU != nil {
			shmOpt.MTU = ifc.MTU()
		}
		charge = shm.Charge(shmOpt)
		if s.cfg.SHMMemory > 0 && s.shmBytes+charge > s.cfg.SHMMemory {
			s.refuse(RefusedSHMMemory)
			log.Warn().Int64("limit", s.cfg.SHMMemory).Int64("used", s.shmBytes).Int64("channel", charge).
				Msg(req + ": the shared-memory channels' memory budget is spent (the client may fall back to RequestUDS)")
			return answerER
		}
	}
	if ep == nil {
		pidfd := *m.pidfd
		if pidfd >= 0 {
			*m.pidfd = -1 // ours now
		} else if pidfd, err = unix.PidfdOpen(int(m.cred.Pid), 0); err != nil {
			log.Warn().Err(err).Msg(req + ": pidfd_open")
			return answerER
		}
		unix.CloseOnExec(pidfd)
		if !pidfdAlive(pidfd) {
			unix.Close(pidfd)
			log.Info().Msg(req + " from a process that exited")
			return answerER
		}
		s.nextID++
		if u == nil {
			u = &uidState{rules: map[*ifaceState]*l4.RuleQuota{}}
			s.uids[m.cred.Uid] = u
		}
		uq := u.rules[ifc]
		if uq == nil {
			uq = l4.NewRuleQuota(s.cfg.MaxRulesPerUID, ifc.rules)
			u.rules[ifc] = uq
		}
		u.clients++
		ep = &endpoint{id: s.nextID, key: key, uid: m.cred.Uid, gid: m.cred.Gid, pidfd: pidfd, ifc: ifc,
			quota: l4.NewRuleQuota(s.cfg.MaxRulesPerClient, uq)}
		ep.log = s.log.With().Uint64("endpoint", ep.id).Str("client", key.addr.String()).Int32("pid", key.pid).Logger()
		s.endpoints[key] = ep
	}
	name := "endpoint " + strconv.FormatUint(ep.id, 10) + " (pid " + strconv.Itoa(int(key.pid)) + ")"
	var port l4.Port
	var peer, more *os.File
	if kind == "shm" {
		opt := shmOpt
		opt.Name, opt.OnPeerClosed = name, s.wake
		var p *shm.Port
		var h shm.Handoff
		p, h, err = shm.New(opt)
		port, peer, more = p, h.Mem, h.Wake
	} else {
		opt := s.cfg.Channel
		opt.Name, opt.OnPeerClosed = name, s.wake
		var p *uds.Port
		p, peer, err = uds.NewPair(opt)
		port = p
	}
	if err != nil {
		log.Error().Err(err).Msg(req + ": making the channel")
		s.dropIfEmpty(ep)
		return answerER
	}
	closePeer := func() {
		peer.Close()
		if more != nil {
			more.Close()
		}
	}
	owner, err := ifc.Pipeline.AddPortQuota(port, ep.quota)
	if err != nil {
		port.Close()
		closePeer()
		log.Error().Err(err).Msg(req + ": attaching the channel")
		s.dropIfEmpty(ep)
		return answerER
	}
	// What the client may do, for the checks on every frame it sends: a
	// privileged source port needs uid 0 or CAP_NET_BIND_SERVICE, read now
	// from the process (as bind(2) would at the time of the call).
	pol := l4.PortPolicy{}
	if st, err := readProcStatus(s.cfg.procDir, key.pid); err == nil && st.Tgid == key.pid && pidfdAlive(ep.pidfd) {
		pol.BindPrivileged = mayBindPrivileged(ep.uid, st)
	}
	if err := ifc.Pipeline.SetPortPolicy(owner.Port, pol); err != nil {
		_ = ifc.Pipeline.RemovePort(owner.Port)
		closePeer()
		log.Error().Err(err).Msg(req + ": setting the channel's policy")
		s.dropIfEmpty(ep)
		return answerER
	}
	ch := &channel{port: port, kind: kind, owner: owner, charge: charge}
	ep.channels = append(ep.channels, ch)
	s.channels++
	s.shmBytes += charge
	u.channels++
	ep.log.Info().Str("interface", ifc.Name).Str("kind", kind).Uint32("port", uint32(owner.Port)).Int("channels", len(ep.channels)).Msg("channel attached")
	return answer{data: []byte(wire.RawFD), file: peer, more: more, undo: func() { s.removeChannel(ep, ch, "the answer could not be sent") }}
}

// mayUse reports whether endpoints on the interface may use local address
// a: one of the interface's addresses or one granted. The caller holds the
// server's lock, under which Addrs changes.
func (ifc *ifaceState) mayUse(a netip.Addr) bool {
	return slices.Contains(ifc.Addrs, a) || slices.Contains(ifc.Granted, a)
}

// dropIfEmpty forgets an endpoint that has no channel (after a RequestUDS
// that failed half-way).
func (s *Server) dropIfEmpty(ep *endpoint) {
	if len(ep.channels) == 0 {
		s.removeEndpoint(ep, "")
	}
}

// owns reports whether port is one of ep's channels.
func (ep *endpoint) owns(port l4.PortID) bool {
	for _, c := range ep.channels {
		if c.owner.Port == port {
			return true
		}
	}
	return false
}

func (s *Server) addMatch(key epKey, m wire.Match, log zerolog.Logger) answer {
	ep := s.endpoints[key]
	if ep == nil {
		log.Warn().Msg("AddMatch from a client without channel (RequestUDS first)")
		return answerER
	}
	log = ep.log
	k, err := matchToKey(m)
	if err != nil {
		log.Warn().Err(err).Msg("AddMatch: not a rule")
		return answerER
	}
	log = log.With().Stringer("rule", k).Logger()
	if !ep.ifc.mayUse(k.Local.Netip()) {
		s.refuse(RefusedAddress)
		log.Warn().Msg("AddMatch refused: the local address is not one of the interface's nor granted by ENDPOINT_ADDRS")
		return answerER
	}
	if l4.HasPorts(k.Proto) && k.LocalPort < s.cfg.PrivilegedPorts {
		st, err := readProcStatus(s.cfg.procDir, key.pid)
		if err != nil || !pidfdAlive(ep.pidfd) || !mayBindPrivileged(ep.uid, st) {
			log.Warn().Err(err).Uint16("below", s.cfg.PrivilegedPorts).Msg("AddMatch: a privileged port needs uid 0 or CAP_NET_BIND_SERVICE")
			return answerER
		}
	}
	if n := ep.quota.Len(); n >= s.cfg.MaxRulesPerClient {
		s.refuse(RefusedRules)
		log.Warn().Int("rules", n).Int("limit", s.cfg.MaxRulesPerClient).Msg("AddMatch: rule limit reached")
		return answerER
	}
	if r, ok := ep.ifc.table.Get(k); ok {
		log.Info().Stringer("held", r).Msg("AddMatch: the rule exists already")
		return answerER
	}
	var sockets []sockdiag.Socket
	switch {
	case isFlowKey(k) && k.Proto == l4.ProtoTCP && s.cfg.KernelTCPFlow != nil:
		// A connection's rule: the listeners and that one connection,
		// not a dump of every connection (milliseconds per connect).
		local := netip.AddrPortFrom(k.Local.Netip(), k.LocalPort)
		remote := netip.AddrPortFrom(k.Remote.Netip(), k.RemotePort)
		if sockets, err = s.cfg.KernelTCPFlow(local, remote); err != nil {
			log.Error().Err(err).Msg("AddMatch: cannot read the kernel's sockets; refusing")
			return answerER
		}
	case l4.HasPorts(k.Proto):
		if sockets, err = s.cfg.KernelPortsOn(k.Proto, k.LocalPort); err != nil {
			log.Error().Err(err).Msg("AddMatch: cannot read the kernel's sockets; refusing")
			return answerER
		}
	}
	if c, ok := findOverlap(ep.ifc.table, k, ep.owns, sockets, s.heldBy(ep)); ok {
		log.Warn().Stringer("conflict", c).Msg("AddMatch refused: the rule overlaps another owner's")
		return answerER
	}
	if err := ep.ifc.table.Insert(l4.Rule{Key: k, Owner: ep.channels[0].owner, Kind: l4.Registered, Watched: isFlowKey(k)}); err != nil {
		if errors.Is(err, l4.ErrRuleLimit) {
			s.refuse(RefusedRules)
			log.Warn().Err(err).Msg("AddMatch: rule limit of the user or of usnetd reached")
			return answerER
		}
		log.Info().Err(err).Msg("AddMatch: insert")
		return answerER
	}
	if fw := ep.ifc.EndpointPorts; fw != nil {
		if err := fw.AddEndpointPort(k); err != nil {
			ep.ifc.table.Remove(k, ep.channels[0].owner.Port)
			log.Error().Err(err).Msg("AddMatch: the kernel firewall cannot take the rule; refusing")
			return answerER
		}
	}
	ep.rules = append(ep.rules, k)
	if isFlowKey(k) {
		ep.ifc.addFlow(k, ep)
		log.Debug().Msg("rule added (a connection's: ends with its flow)")
		return answerOK
	}
	log.Info().Msg("rule added")
	return answerOK
}

// heldBy returns the check of findOverlap for ep's own kernel sockets: the
// inodes among them that ep's process holds (/proc/PID/fd), trusted only
// when the process is still the one of ep's pidfd after the read.
func (s *Server) heldBy(ep *endpoint) func([]sockdiag.Socket) map[uint64]bool {
	return func(over []sockdiag.Socket) map[uint64]bool {
		want := map[uint64]bool{}
		for _, so := range over {
			if so.Inode != 0 {
				want[so.Inode] = true
			}
		}
		if len(want) == 0 {
			return nil
		}
		found, err := socketInodes(s.cfg.procDir, ep.key.pid, want)
		if err != nil || !pidfdAlive(ep.pidfd) {
			ep.log.Warn().Err(err).Msg("AddMatch: cannot read the client's open files")
			return nil
		}
		if len(found) > 0 {
			ep.log.Info().Int("sockets", len(found)).Msg("AddMatch: the kernel sockets on the rule's port are the client's own reservation")
		}
		return found
	}
}

func (s *Server) removeMatch(key epKey, m wire.Match, log zerolog.Logger) {
	ep := s.endpoints[key]
	if ep == nil {
		log.Warn().Msg("RemoveMatch from a client without channel")
		return
	}
	log = ep.log
	k, err := matchToKey(m)
	if err != nil {
		log.Warn().Err(err).Msg("RemoveMatch: not a rule")
		return
	}
	r, ok := ep.ifc.table.Get(k)
	if !ok || !ep.owns(r.Owner.Port) {
		log.Warn().Stringer("rule", k).Bool("exists", ok).Msg("RemoveMatch of a rule the client does not hold; ignored")
		return
	}
	s.removeRule(ep, k, r.Owner.Port)
	log.Info().Stringer("rule", k).Msg("rule removed")
}

// removeRule removes ep's rule k (owned by its port) from the table, the
// firewall and the flows.
func (s *Server) removeRule(ep *endpoint, k l4.Key, port l4.PortID) {
	ep.ifc.table.Remove(k, port)
	ep.rules = slices.DeleteFunc(ep.rules, func(x l4.Key) bool { return x == k })
	ep.forgetInFirewall(k)
	delete(ep.ifc.flows, k)
}

// removeChannel detaches one channel; the endpoint goes with its last one.
func (s *Server) removeChannel(ep *endpoint, ch *channel, why string) {
	i := slices.Index(ep.channels, ch)
	if i < 0 {
		return
	}
	if err := ep.ifc.Pipeline.RemovePort(ch.owner.Port); err != nil && !errors.Is(err, l4.ErrNoSuchPort) {
		ep.log.Error().Err(err).Msg("detaching a channel")
	}
	ch.port.Close()
	ep.ifc.gone(ch)
	ep.channels = slices.Delete(ep.channels, i, i+1)
	s.channelGone(ep, ch)
	if i == 0 && len(ep.rules) > 0 {
		ep.log.Info().Int("rules", len(ep.rules)).Msg("the registered rules went with the oldest channel")
		ep.forgetInFirewall(ep.rules...)
		ep.ifc.forgetFlows(ep.rules)
		ep.rules = nil
	}
	ep.log.Info().Str("why", why).Uint32("port", uint32(ch.owner.Port)).Int("channels", len(ep.channels)).Msg("channel detached")
	if len(ep.channels) == 0 {
		s.removeEndpoint(ep, why)
	}
}

// forgetInFirewall removes ep's rules ks from the kernel side's copy.
func (ep *endpoint) forgetInFirewall(ks ...l4.Key) {
	fw := ep.ifc.EndpointPorts
	if fw == nil {
		return
	}
	for _, k := range ks {
		if err := fw.RemoveEndpointPort(k); err != nil {
			ep.log.Error().Err(err).Stringer("rule", k).Msg("removing the rule from the kernel firewall")
		}
	}
}

// removeEndpoint detaches every channel of ep and forgets it.
func (s *Server) removeEndpoint(ep *endpoint, why string) {
	if s.endpoints[ep.key] != ep {
		return
	}
	delete(s.endpoints, ep.key)
	for _, ch := range ep.channels {
		if err := ep.ifc.Pipeline.RemovePort(ch.owner.Port); err != nil && !errors.Is(err, l4.ErrNoSuchPort) {
			ep.log.Error().Err(err).Msg("detaching a channel")
		}
		ch.port.Close()
		ep.ifc.gone(ch)
		s.channelGone(ep, ch)
	}
	ep.forgetInFirewall(ep.rules...)
	ep.ifc.forgetFlows(ep.rules)
	ep.channels, ep.rules = nil, nil
	if u := s.uids[ep.uid]; u != nil {
		if u.clients--; u.clients <= 0 {
			delete(s.uids, ep.uid)
		}
	}
	unix.Close(ep.pidfd)
	if why != "" {
		ep.log.Info().Str("why", why).Msg("endpoint removed")
	}
}

// channelGone counts a detached channel ch of ep.
func (s *Server) channelGone(ep *endpoint, ch *channel) {
	s.channels--
	s.shmBytes -= ch.charge
	if u := s.uids[ep.uid]; u != nil {
		u.channels--
	}
}

func (s *Server) sortedEndpoints() []*endpoint {
	eps := make([]*endpoint, 0, len(s.endpoints))
	for _, ep := range s.endpoints {
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b *endpoint) int { return cmp.Compare(a.id, b.id) })
	return eps
}

// wake makes the janitor look now (a channel's peer closed).
func (s *Server) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// janitor removes what is gone: endpoints whose process exited, channels
// whose peer closed.
func (s *Server) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	for {
		tick := false
		select {
		case <-s.done:
			return
		case <-t.C:
			tick = true
		case <-s.kick:
		}
		s.mu.Lock()
		if !s.closed {
			s.reap()
			if tick {
				s.endFlows()
			}
		}
		s.mu.Unlock()
	}
}

// reap removes endpoints whose process exited and channels whose peer
// closed.
func (s *Server) reap() {
	eps := s.sortedEndpoints()
	if len(eps) == 0 {
		return
	}
	pfds := make([]unix.PollFd, len(eps))
	for i, ep := range eps {
		pfds[i] = unix.PollFd{Fd: int32(ep.pidfd), Events: unix.POLLIN}
	}
	if _, err := unix.Poll(pfds, 0); err != nil && !errors.Is(err, unix.EINTR) {
		s.log.Error().Err(err).Msg("polling the clients' pidfds")
	}
	for i, ep := range eps {
		if pfds[i].Revents != 0 {
			s.removeEndpoint(ep, "the client process exited")
			continue
		}
		for _, ch := range slices.Clone(ep.channels) {
			select {
			case <-ch.peerClosed():
				s.removeChannel(ep, ch, "the client closed the channel")
			default:
			}
		}
	}
}

// MaxUsedPortsAnswer bounds the answer to QueryUsedPorts: the buffer the
// original's client library reads it into.
const MaxUsedPortsAnswer = 1_000_000

// usedPorts answers QueryUsedPorts, at most MaxUsedPortsAnswer bytes: the
// rules with a local port (with a remote: connected, without: listening),
// as the original listed them, and the kernel's listening sockets (bound,
// unconnected: on a claimed interface's address or a wildcard one, listed
// under each address of the interfaces). The kernel's connected sockets
// are left out: those that carried traffic are learned rules already, and
// the rest would make the answer grow with every connection of the host
// (QueryPortsInUse answers for every socket in a fixed size). When the
// list does not fit, the registered rules come first, then the kernel's
// listening sockets, then the learned rules, and the rest is left out.
func (s *Server) usedPorts(log zerolog.Logger) []byte {
	type entry struct {
		e         wire.PortEntry
		connected bool
	}
	seen := map[entry]bool{}
	var list []entry
	base := len(wire.EncodeUsedPorts(nil, nil))
	size, left := base, 0
	add := func(e wire.PortEntry, connected bool) {
		k := entry{e, connected}
		if seen[k] {
			return
		}
		n := len(wire.EncodeUsedPorts([]wire.PortEntry{e}, nil)) - base + 1 // and a comma
		if size+n > MaxUsedPortsAnswer {
			left++
			return
		}
		seen[k] = true
		size += n
		list = append(list, k)
	}
	var addrs []netip.Addr
	for _, ifc := range s.order {
		ifc.table.Each(func(r l4.Rule) {
			if e, ok := portEntry(r.Key); ok && r.Kind == l4.Registered {
				add(e, !r.Listening())
			}
		})
		addrs = append(addrs, ifc.Addrs...)
	}
	if sockets, err := s.cfg.KernelPorts(); err != nil {
		log.Error().Err(err).Msg("QueryUsedPorts: cannot read the kernel's sockets; answering with the rules only")
	} else {
		for _, so := range sockets {
			if !so.Listening() {
				continue
			}
			for _, e := range socketEntries(so, addrs) {
				add(e, false)
			}
		}
	}
	for _, ifc := range s.order {
		ifc.table.Each(func(r l4.Rule) {
			if e, ok := portEntry(r.Key); ok && r.Kind != l4.Registered {
				add(e, !r.Listening())
			}
		})
	}
	if left > 0 {
		log.Warn().Int("listed", len(list)).Int("left_out", left).Int("bytes", MaxUsedPortsAnswer).
			Msg("QueryUsedPorts: the answer would not fit the original client's buffer; left entries out (QueryPortsInUse answers for every port)")
	}
	slices.SortFunc(list, func(a, b entry) int {
		if a.e.Protocol != b.e.Protocol {
			return int(a.e.Protocol) - int(b.e.Protocol)
		}
		if c := a.e.Addr.Compare(b.e.Addr); c != 0 {
			return c
		}
		return int(a.e.Port) - int(b.e.Port)
	})
	var listening, connected []wire.PortEntry
	for _, x := range list {
		if x.connected {
			connected = append(connected, x.e)
		} else {
			listening = append(listening, x.e)
		}
	}
	return wire.EncodeUsedPorts(listening, connected)
}

// portsInUse answers QueryPortsInUse: the local ports of proto that a rule
// (any owner, any address) or a kernel socket (any state, any address)
// holds. Without the kernel's inventory it answers ER: a partial set would
// let a client pick a port the kernel uses.
func (s *Server) portsInUse(proto uint8, log zerolog.Logger) []byte {
	ps := new(wire.PortSet)
	for _, ifc := range s.order {
		ifc.table.Each(func(r l4.Rule) {
			if r.Proto == proto && r.Flags&l4.KeyLocalPort != 0 {
				ps.Add(r.LocalPort)
			}
		})
	}
	sockets, err := s.cfg.KernelPorts()
	if err != nil {
		log.Error().Err(err).Msg("QueryPortsInUse: cannot read the kernel's sockets")
		return []byte(wire.RawER)
	}
	for _, so := range sockets {
		if so.Proto == proto {
			ps.Add(so.Local.Port())
		}
	}
	return wire.EncodePortsInUse(proto, ps)
}

// SetAddrs replaces the address list of interface ifname (Interface.Addrs:
// QueryUsedPorts lists a kernel socket bound to the wildcard address under
// each), for when the interface's addresses change. A name that is not one
// of the server's interfaces is ignored.
func (s *Server) SetAddrs(ifname string, addrs []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ifc := s.ifaces[ifname]; ifc != nil {
		ifc.Addrs = slices.Clone(addrs)
	}
}

// maxStatusAnswer bounds the QueryStatus answer well below MaxAnswerSize
// and the control socket's send buffer: a status that would be larger
// leaves out rules (see Status).
const maxStatusAnswer = 256<<10 - 4096

// Status returns what QueryStatus answers.
func (s *Server) Status() wire.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status()
}

func (s *Server) status() wire.Status {
	st := wire.Status{Version: s.cfg.Version}
	byPort := map[*ifaceState]map[l4.PortID]string{}
	for _, ifc := range s.order {
		ps := ifc.Pipeline.Stats()
		queues := 0
		names := map[l4.PortID]string{}
		ports := make(map[l4.PortID]*l4.PortStats, len(ps.Ports))
		ringDrops := map[l4.PortID]uint64{}
		for i, p := range ps.Ports {
			names[p.Port] = p.Kind.String() + " " + p.Name
			ports[p.Port] = &ps.Ports[i]
			if p.Kind == l4.PortNIC {
				queues = p.RxQueues
			}
		}
		for _, r := range ps.Rings {
			ringDrops[r.To] += r.DroppedFull
		}
		byPort[ifc] = names
		in := wire.InterfaceStatus{Name: ifc.Name, Backend: ifc.Backend, Queues: queues, XDPMode: ifc.XDPMode}
		if ifc.MTU != nil {
			in.MTU = ifc.MTU()
		}
		st.Interfaces = append(st.Interfaces, in)
		for _, ep := range s.sortedEndpoints() {
			if ep.ifc != ifc {
				continue
			}
			es := wire.EndpointStatus{ID: ep.id, PID: ep.key.pid, UID: ep.uid, Address: ep.key.addr.String(),
				Interface: ifc.Name, Channels: len(ep.channels)}
			for _, c := range ep.channels {
				es.ChannelKinds = append(es.ChannelKinds, c.kind)
			}
			for _, k := range ep.rules {
				es.Rules = append(es.Rules, keyToMatch(k))
			}
			for _, c := range ep.channels {
				names[c.owner.Port] = "endpoint " + strconv.FormatUint(ep.id, 10)
				if p := ports[c.owner.Port]; p != nil {
					es.RxPackets += p.TxPackets // into the endpoint
					es.TxPackets += p.RxPackets // from the endpoint
					es.Drops += p.TxErrors
					for r, n := range p.Drops {
						if l4.DropReason(r).Isolation() && n > 0 {
							es.Refused += n
							if es.RefusedBy == nil {
								es.RefusedBy = map[string]uint64{}
							}
							es.RefusedBy[l4.DropReason(r).String()] += n
						}
					}
				}
				es.Drops += ringDrops[c.owner.Port]
			}
			st.Endpoints = append(st.Endpoints, es)
		}
	}
	for _, ifc := range s.order {
		names := byPort[ifc]
		for _, r := range ifc.table.Rules() {
			owner, ok := names[r.Owner.Port]
			if !ok {
				owner = r.Owner.Kind.String() + " port " + strconv.Itoa(int(r.Owner.Port))
			}
			st.Rules = append(st.Rules, wire.RuleStatus{Match: keyToMatch(r.Key), Owner: owner, Kind: r.Kind.String(), Sticky: r.Sticky})
		}
	}
	return st
}

// statusBytes is the encoded answer to QueryStatus, cut to fit one
// datagram: learned rules are left out first, then rules from the end.
func (s *Server) statusBytes(log zerolog.Logger) []byte {
	st := s.status()
	b, err := wire.EncodeStatus(st)
	if err != nil {
		log.Error().Err(err).Msg("QueryStatus: encoding")
		return []byte(wire.RawER)
	}
	if len(b) <= maxStatusAnswer {
		return b
	}
	all := len(st.Rules)
	st.Rules = slices.DeleteFunc(st.Rules, func(r wire.RuleStatus) bool { return r.Kind == wire.RuleLearned })
	for {
		if b, err = wire.EncodeStatus(st); err != nil || len(b) <= maxStatusAnswer || len(st.Rules) == 0 {
			break
		}
		st.Rules = st.Rules[:len(st.Rules)*3/4]
	}
	if err != nil || len(b) > maxStatusAnswer {
		log.Error().Int("bytes", len(b)).Msg("QueryStatus: the answer does not fit a datagram")
		return []byte(wire.RawER)
	}
	log.Warn().Int("rules", all).Int("listed", len(st.Rules)).Msg("QueryStatus: too many rules for one datagram; listed a part")
	return b
}

// ChannelDrops returns the frames that the endpoints' channels on the
// interface ifname dropped before the switch saw them, by reason, as
// running totals over every channel it had: rx_too_big, a datagram an
// endpoint sent that is longer than a buffer (its MTU is above the NIC's).
// Frames a channel could not take (its socket buffer full) are counted as
// the channel port's TX errors.
func (s *Server) ChannelDrops(ifname string) map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ifc := s.ifaces[ifname]
	if ifc == nil {
		return nil
	}
	n := ifc.goneTooBig
	for _, ep := range s.endpoints {
		if ep.ifc != ifc {
			continue
		}
		for _, ch := range ep.channels {
			n += ch.rxTooBig()
		}
	}
	return map[string]uint64{"rx_too_big": n}
}

// SHMChannels returns the counters of the shared-memory channels on the
// interface ifname, as running totals over every such channel it had:
// "ring_full" (frames for an endpoint whose ring was full), "too_big"
// (frames longer than a slot), "bad_index" (ring indices of an endpoint
// that were out of range), "bad_length" (frames of an endpoint with a
// length out of range) and "wakeups" (wake-ups sent to endpoints).
func (s *Server) SHMChannels(ifname string) map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ifc := s.ifaces[ifname]
	if ifc == nil {
		return nil
	}
	t := ifc.goneSHM
	for _, ep := range s.endpoints {
		if ep.ifc != ifc {
			continue
		}
		for _, ch := range ep.channels {
			st := ch.shmStats()
			t.TxRingFull += st.TxRingFull
			t.TxTooBig += st.TxTooBig
			t.RxBadIndex += st.RxBadIndex
			t.TxBadIndex += st.TxBadIndex
			t.RxBadLen += st.RxBadLen
			t.Wakeups += st.Wakeups
		}
	}
	return map[string]uint64{
		"ring_full": t.TxRingFull, "too_big": t.TxTooBig, "bad_index": t.RxBadIndex + t.TxBadIndex,
		"bad_length": t.RxBadLen, "wakeups": t.Wakeups,
	}
}
