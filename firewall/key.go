package firewall

import (
	"fmt"
	"time"

	l4 "github.com/usnetd/usnetd/switch"
)

// Value flags of a kernel-allow entry (FW_* in bpf/firewall.c).
const (
	flagSticky  = 1
	flagLearned = 2
)

// Entry is one entry of the kernel-allow maps.
type Entry struct {
	Key l4.Key
	// Sticky entries were allowed with sticky set (DEBUG_PORTS): nothing
	// in this package removes them but RevokeKernel and Close.
	Sticky bool
	// Learned entries were written by the egress learner: the reverse
	// tuple of a frame the kernel sent. ExpireLearned removes them once
	// their socket is gone. The others were registered with AllowKernel.
	Learned bool
	// Idle is the time since the entry was made or, for learned entries,
	// last refreshed by the kernel's outgoing traffic (at most once a
	// second).
	Idle time.Duration
}

func (e Entry) String() string {
	kind := "registered"
	if e.Learned {
		kind = "learned"
	}
	if e.Sticky {
		kind += " sticky"
	}
	return fmt.Sprintf("%v (%s, idle %v)", e.Key, kind, e.Idle.Truncate(time.Millisecond))
}

// keyOf converts an l4.Key to the map's key. The layouts match field for
// field; ports are in host byte order in both.
func keyOf(k l4.Key) bpfFwKey {
	return bpfFwKey{
		Local:  k.Local,
		Remote: k.Remote,
		Lport:  k.LocalPort,
		Rport:  k.RemotePort,
		Proto:  k.Proto,
		Flags:  k.Flags,
	}
}

// l4Key converts a map key back.
func l4Key(k bpfFwKey) l4.Key {
	return l4.Key{
		Local:      k.Local,
		Remote:     k.Remote,
		LocalPort:  k.Lport,
		RemotePort: k.Rport,
		Proto:      k.Proto,
		Flags:      k.Flags,
	}
}

// checkKey accepts what l4.Key.Validate accepts and nothing else.
func checkKey(k l4.Key) error {
	if err := k.Validate(); err != nil {
		return fmt.Errorf("%w: %v: %w", ErrInvalidKey, k, err)
	}
	return nil
}
