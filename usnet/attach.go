package usnet

// The client side of usnetd's control protocol is control/client; this is
// the little a stack adds to it.

import (
	"fmt"
	"os"
	"time"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
)

// Attacher is a stack's connection to usnetd: the requests of the control
// protocol that a stack makes. Close sends DeleteClient and releases the
// connection; it is called once, when the stack is torn down. The methods
// are called from one goroutine at a time. *client.Client is one.
type Attacher interface {
	// RequestUDS asks for a packet channel on the interface: one end of a
	// socketpair(AF_UNIX, SOCK_DGRAM), one Ethernet frame per datagram.
	RequestUDS(iface string) (*os.File, error)
	// AddMatch registers a rule for the stack's channel.
	AddMatch(wire.Match) error
	// RemoveMatch removes one of the stack's rules.
	RemoveMatch(wire.Match) error
	// QueryPortsInUse returns the local ports of protocol proto that are
	// in use: usnetd's rules and the kernel's sockets.
	QueryPortsInUse(proto uint8) (*wire.PortSet, error)
	// Close sends DeleteClient: the channel and the rules go.
	Close() error
}

// ErrRefused is wrapped by the errors of the control client when usnetd
// answers "ER". It is client.ErrRefused.
var ErrRefused = client.ErrRefused

// controlTimeout bounds the wait for an answer. usnetd always answers
// RequestUDS and AddMatch.
const controlTimeout = client.DefaultTimeout

// controlClient is the Attacher of DialControl: a control/client.Client
// that also tells the MTU of an interface's channels.
type controlClient struct {
	*client.Client
	socket string // usnetd's socket, for ChannelMTU's own connection
}

// channelMTUer is an Attacher that can say what MTU a channel on an
// interface carries (0: it does not know).
type channelMTUer interface {
	ChannelMTU(iface string) (int, error)
}

// statusTimeout bounds the wait for a QueryStatus answer: the original
// usnetd does not know the request and never answers it.
const statusTimeout = time.Second

// ChannelMTU asks usnetd (QueryStatus) for the MTU its channels on iface
// carry. It uses a connection of its own, closed afterwards, with a short
// timeout: a server that does not know QueryStatus leaves it unanswered.
func (c *controlClient) ChannelMTU(iface string) (int, error) {
	q, err := client.Dial(client.Options{SocketPath: c.socket, Timeout: statusTimeout})
	if err != nil {
		return 0, fmt.Errorf("usnet: %w", err)
	}
	st, err := q.QueryStatus()
	q.Close() // DeleteClient: this connection never attached
	if err != nil {
		return 0, fmt.Errorf("usnet: %w", err)
	}
	for _, in := range st.Interfaces {
		if in.Name == iface {
			return in.MTU, nil
		}
	}
	return 0, nil
}

// DialControl connects to usnetd's control socket at socketPath with
// control/client (client.Dial: the client's socket in $XDG_RUNTIME_DIR,
// /run/user/UID or the temporary directory, stale sockets of killed
// clients removed). It is the default of Config.Attach.
func DialControl(socketPath string) (Attacher, error) {
	c, err := client.Dial(client.Options{SocketPath: socketPath, Timeout: controlTimeout})
	if err != nil {
		return nil, fmt.Errorf("usnet: %w", err)
	}
	return &controlClient{Client: c, socket: socketPath}, nil
}
