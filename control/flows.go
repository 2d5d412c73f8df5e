package control

// Connections' rules. The original's client library registers every
// outgoing connection as a rule with the full 5-tuple and never removes
// it (dropping a socket sends nothing), so such a rule ends with its flow,
// as a connection would: a rule with a local port, a remote address and a
// remote port (TCP, UDP, or any protocol with ports) goes
//
//   - at the janitor's next run after the endpoint sent a TCP RST (its
//     stack is done with the connection);
//   - FlowLinger (2 s) after its last frame once a FIN from each side
//     passed (the last ACK and retransmitted FINs still get through), or
//     a RST from the remote side: a RST that someone off the path forged
//     (the switch does not check sequence numbers) thus ends no
//     connection that still carries frames, only one quiet for
//     FlowLinger after it;
//   - FlowIdle (90 s, the original's housekeeping period) after its last
//     frame either way, whatever the protocol (UDP, or a TCP flow whose
//     FIN or RST was not seen).
//
// The switch's FlowWatch sees the frames (l4.FlowWatch: activity on a
// coarse clock that the janitor advances every CheckInterval, FINs and
// RSTs as events); the janitor applies the rules above. A removed rule
// gives its room back to the client's rule limit, so MaxRulesPerClient
// counts live connections, not every connection a process ever made.
// A client that sends RemoveMatch still removes its rule at once, and
// listening rules (no remote) stay until removed or the client goes.

import (
	"time"

	l4 "github.com/usnetd/usnetd/switch"
)

// flowEvents is the size of the FlowWatch's FIN/RST buffer per interface:
// events between two janitor runs; more are counted as lost and those
// flows end by idleness.
const flowEvents = 16384

// flowState is what the janitor knows of one connection's rule.
type flowState struct {
	ep             *endpoint
	finEP, finPeer bool   // a FIN passed from the endpoint, from the peer
	rst            bool   // the endpoint sent a RST
	ended          uint32 // the clock when the flow was over (RST, both FINs); 0 while open
}

// isFlowKey reports whether k is a connection's rule: local port, remote
// address and remote port.
func isFlowKey(k l4.Key) bool {
	return k.Flags == l4.KeyLocalPort|l4.KeyRemote|l4.KeyRemotePort && l4.HasPorts(k.Proto)
}

// addFlow starts watching ep's new rule k.
func (ifc *ifaceState) addFlow(k l4.Key, ep *endpoint) {
	ifc.flows[k] = &flowState{ep: ep}
	ifc.watch.Touch(k)
}

// forgetFlows stops watching the rules ks (removed otherwise).
func (ifc *ifaceState) forgetFlows(ks []l4.Key) {
	for _, k := range ks {
		delete(ifc.flows, k)
	}
}

// ticks converts a duration to janitor clock ticks (at least 1).
func (s *Server) ticks(d time.Duration) uint32 {
	n := (d.Nanoseconds() + s.cfg.CheckInterval.Nanoseconds() - 1) / s.cfg.CheckInterval.Nanoseconds()
	return uint32(max(n, 1))
}

// endFlows advances each interface's flow clock, reads the FINs and RSTs
// seen since the last run, and removes the connections' rules whose flow
// ended or went idle. The caller holds the server's lock.
func (s *Server) endFlows() {
	idle, linger := s.ticks(s.cfg.FlowIdle), s.ticks(s.cfg.FlowLinger)
	for _, ifc := range s.order {
		now := ifc.watch.Tick()
		for drained := false; !drained; {
			select {
			case e := <-ifc.watch.Ends():
				fs := ifc.flows[e.Key]
				if fs == nil || fs.ended != 0 {
					continue
				}
				switch {
				case e.RST:
					fs.ended, fs.rst = now, e.FromEndpoint
				case e.FromEndpoint:
					fs.finEP = true
				default:
					fs.finPeer = true
				}
				if fs.finEP && fs.finPeer {
					fs.ended = now
				}
			default:
				drained = true
			}
		}
		if len(ifc.flows) == 0 {
			continue
		}
		var gone []l4.Key
		var why []string
		for k, fs := range ifc.flows {
			last := ifc.watch.LastSeen(k)
			switch {
			case fs.rst:
				gone, why = append(gone, k), append(why, "the connection was reset")
			case fs.ended != 0 && now-max(last, fs.ended) >= linger:
				gone, why = append(gone, k), append(why, "the connection ended")
			case now-last >= idle:
				gone, why = append(gone, k), append(why, "the connection was idle")
			}
		}
		for i, k := range gone {
			fs := ifc.flows[k]
			ep := fs.ep
			if s.endpoints[ep.key] != ep || len(ep.channels) == 0 {
				delete(ifc.flows, k)
				continue
			}
			s.removeRule(ep, k, ep.channels[0].owner.Port)
			ep.log.Debug().Stringer("rule", k).Str("why", why[i]).Msg("rule removed")
		}
		if len(gone) > 0 {
			s.log.Debug().Str("interface", ifc.Name).Int("removed", len(gone)).Int("left", len(ifc.flows)).Msg("connections' rules ended with their flows")
		}
	}
}
