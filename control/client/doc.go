// Package client is the Go client of usnetd's control protocol: Dial,
// RequestUDS, AddMatch, RemoveMatch, QueryUsedPorts, QueryStatus and Close.
//
// A Client binds a private socket (a file "usnet-client-PID-RANDOM" in
// /run/user/UID or the temporary directory, or an abstract name) and
// connects it to usnetd's socket, so that the kernel lets only usnetd send
// to it. Every answer is waited for with a timeout; errors say whether
// usnetd is not running, refused the request, denied access or did not
// answer (ErrNotRunning, ErrRefused, ErrAccessDenied, ErrTimeout).
//
// A Session (OpenSession) is a channel that survives restarts of usnetd:
// it notices usnetd going away (a pidfd of the channel's maker, or a failed
// send the caller reports with Lost), dials again with bounded backoff
// (50 ms doubling to 1 s, until Close), requests a new channel, registers
// its rules again and hands the new channel to SessionOptions.Reattached.
//
// It never leaves its socket file behind after Close, never keeps a
// descriptor it did not return to the caller, and never takes an answer
// from anyone but usnetd.
package client
