// Package client is the Go client of usnetd's control protocol: Dial,
// RequestUDS, RequestSHM, AddMatch, RemoveMatch, QueryUsedPorts, QueryStatus
// and Close. RequestChannel asks for a shared-memory channel and falls back
// to RequestUDS when usnetd refuses it or does not answer (a usnetd
// without it).
//
// The messages are package control/wire's (Match, UsedPorts, Status...);
// the client depends on it, backends/shm/ring (the shared-memory
// channel's layout, itself standard library and x/sys only), the standard
// library and x/sys only, never on usnetd's server (package control). It
// is the one client of the protocol in this repository: usnetctl, usnetd-lab and usnet (DialControl) use it.
//
// A Client binds a private socket (a file "usnet-client-PID-RANDOM", mode
// 0666 so that usnetd can answer without CAP_DAC_OVERRIDE, in the first of
// $XDG_RUNTIME_DIR, /run/user/UID and the temporary directory where it can
// be bound, or in Options.Dir; or an abstract name) and connects it to
// usnetd's socket, so that the kernel lets only usnetd send to it. Before
// binding, it removes the socket files that killed clients left in that
// directory (RemoveStale). Every answer is waited for with a timeout;
// errors say whether usnetd is not running, refused the request, denied
// access or did not answer (ErrNotRunning, ErrRefused, ErrAccessDenied,
// ErrTimeout). Close sends DeleteClient when the client asked for a
// channel.
//
// A Session (OpenSession) is a channel that survives restarts of usnetd:
// it notices usnetd going away (a pidfd of the channel's maker, or a failed
// send the caller reports with Lost), dials again with bounded backoff
// (50 ms doubling to 1 s, until Close), requests a new channel, registers
// its rules again and hands the new channel to SessionOptions.Reattached.
// Its channels are shared-memory ones with the fallback of RequestChannel
// (SessionOptions.UDS: datagram ones only). The loop itself is a Watch
// (StartWatch), which usnet's stacks use too, to swap a new channel under
// a running network stack; Channel.Peer, ChannelPeer and PeerPidfd tell
// whom to watch.
//
// It never leaves its socket file behind after Close, never keeps a
// descriptor it did not return to the caller, and never takes an answer
// from anyone but usnetd.
package client
