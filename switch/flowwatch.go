package l4

import (
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"
)

// FlowWatch tells the control plane when the flows of endpoints end, so
// that rules an endpoint registered for one connection (a full 5-tuple,
// as the original's client library registers every outgoing connection
// and never removes) can end with it. Attach one to a switch with
// Switch.SetFlowWatch; Decide then notes every frame of a Watched rule's
// flow, both ways: one forwarded to the rule's owner, and one the owner
// sends that the rule would answer. Frames of other rules cost nothing
// (the bit comes with the lookup Decide does anyway). It keeps:
//
//   - activity: the frame's flow (as the endpoint sees it: local address
//     and port, remote address and port, protocol) hashes to one of 65,536
//     slots, which keeps the clock's value at the flow's last frame. The
//     slot is written only when the clock moved since its last write (at
//     most once per Tick per slot), so a busy flow costs a load and a
//     compare per frame. Flows that share a slot look as active as the
//     busiest of them: an idle flow may be seen as active (its rule stays
//     longer), never the other way round.
//   - ends: a TCP frame with FIN or RST is put into a buffered channel
//     (Ends) without blocking; when it is full the event is counted (Lost)
//     and the flow ends by idleness instead.
//
// It does not allocate per frame. The control plane advances the clock
// (Tick) and asks LastSeen.
type FlowWatch struct {
	now  atomic.Uint32
	seed uint32
	ends chan FlowEnd
	lost atomic.Uint64
	seen [1 << 16]atomic.Uint32
}

// FlowEnd is a TCP FIN or RST of a flow: Key is the flow as the endpoint
// sees it (FlowKey(local, lport, remote, rport, ProtoTCP)); FromEndpoint
// says who sent it.
type FlowEnd struct {
	Key          Key
	FIN, RST     bool
	FromEndpoint bool
}

// TCP flags.
const (
	TCPFlagFIN = 0x01
	TCPFlagRST = 0x04
)

// NewFlowWatch returns a watch whose Ends channel buffers events frames.
func NewFlowWatch(events int) *FlowWatch {
	w := &FlowWatch{seed: rand.Uint32() | 1, ends: make(chan FlowEnd, max(events, 1))}
	w.now.Store(1)
	return w
}

// SetFlowWatch attaches w (nil: none) to the switch.
func (s *Switch) SetFlowWatch(w *FlowWatch) { s.flows.Store(w) }

// Tick advances the clock by one and returns its new value.
func (w *FlowWatch) Tick() uint32 { return w.now.Add(1) }

// Now returns the clock.
func (w *FlowWatch) Now() uint32 { return w.now.Load() }

// Ends returns the channel of FINs and RSTs.
func (w *FlowWatch) Ends() <-chan FlowEnd { return w.ends }

// Lost returns how many FINs and RSTs did not fit the channel.
func (w *FlowWatch) Lost() uint64 { return w.lost.Load() }

// LastSeen returns the clock at the last frame of the flow k (an exact
// key), or of another flow in its slot.
func (w *FlowWatch) LastSeen(k Key) uint32 {
	return w.seen[w.slot(&k.Local, k.LocalPort, &k.Remote, k.RemotePort, k.Proto)].Load()
}

// Touch marks the flow k active now (a rule just made for it).
func (w *FlowWatch) Touch(k Key) {
	w.seen[w.slot(&k.Local, k.LocalPort, &k.Remote, k.RemotePort, k.Proto)].Store(w.now.Load())
}

func (w *FlowWatch) slot(local *Addr, lport uint16, remote *Addr, rport uint16, proto uint8) uint32 {
	h := binary.LittleEndian.Uint32(local[12:])*0x9e3779b1 ^ binary.LittleEndian.Uint32(remote[12:])
	h = (h ^ binary.LittleEndian.Uint32(local[8:])) * 0x85ebca6b
	h ^= binary.LittleEndian.Uint32(remote[8:]) ^ (uint32(lport)<<16 | uint32(rport))
	h = (h ^ uint32(proto) ^ w.seed) * 0xc2b2ae35
	return (h ^ h>>16) & (1<<16 - 1)
}

// noteFlow tells the switch's FlowWatch, if any, that a frame f of a
// Watched rule's flow (as its owner sees it) passed.
func (s *Switch) noteFlow(local *Addr, lport uint16, remote *Addr, rport uint16, f *Frame, fromEndpoint bool) {
	if w := s.flows.Load(); w != nil {
		w.note(local, lport, remote, rport, f.Proto, f.TCPFlags, fromEndpoint)
	}
}

// note is Decide's: a frame of the flow (local, lport, remote, rport,
// proto) passed, with TCP flags flags.
func (w *FlowWatch) note(local *Addr, lport uint16, remote *Addr, rport uint16, proto, flags uint8, fromEndpoint bool) {
	i := w.slot(local, lport, remote, rport, proto)
	if now := w.now.Load(); w.seen[i].Load() != now {
		w.seen[i].Store(now)
	}
	if proto == ProtoTCP && flags&(TCPFlagFIN|TCPFlagRST) != 0 {
		select {
		case w.ends <- FlowEnd{Key: FlowKey(*local, lport, *remote, rport, proto), FIN: flags&TCPFlagFIN != 0,
			RST: flags&TCPFlagRST != 0, FromEndpoint: fromEndpoint}:
		default:
			w.lost.Add(1)
		}
	}
}
