// Package control is usnetd's control socket: the wire types of the
// original's protocol (byte-compatible), the server, fd handover, kernel-
// verified credentials and the policy that decides who may claim what.
//
// It must never trust a client's word for who it is (credentials come from
// the kernel), never leave a client waiting for an answer that is due, and
// never touch frames: it changes rules and attaches ports, the data path
// does the rest.
package control
