package sockdiag

import (
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseDump feeds arbitrary bytes to the parser of the kernel's
// answers: it must never panic, every socket it returns must be valid,
// and it never returns more sockets than the bytes can hold.
func FuzzParseDump(f *testing.F) {
	ap := netip.MustParseAddrPort
	a := diagMsg(unix.AF_INET, ap("198.18.0.1:22"), ap("0.0.0.0:0"), TCPListen, 0, 651)
	b := diagMsg(unix.AF_INET6, ap("[2001:db8::1]:443"), ap("[2001:db8::2]:5000"), TCPEstablished, 1000, 99)
	for _, s := range [][]byte{
		nil,
		msg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, 1, a),
		slices.Concat(msg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, 1, a), msg(unix.SOCK_DIAG_BY_FAMILY, 0, 1, b), msg(unix.NLMSG_DONE, 0, 1, make([]byte, 4))),
		msg(unix.SOCK_DIAG_BY_FAMILY, nlmFDumpIntr, 1, b),
		errMsg(1, -2),
		errMsg(1, 0),
		msg(unix.SOCK_DIAG_BY_FAMILY, 0, 2, a), // another sequence
		msg(unix.SOCK_DIAG_BY_FAMILY, 0, 1, a[:71]),
		make([]byte, 15),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ss, _, err := ParseDump(in, 1, ProtoUDP, nil)
		if len(ss) > len(in)/(nlmsgHdrLen+diagMsgLen) {
			t.Fatalf("%d sockets from %d bytes", len(ss), len(in))
		}
		_ = err
		for _, s := range ss {
			if !s.Local.IsValid() || !s.Remote.IsValid() || s.Proto != ProtoUDP || s.Local.Addr().Is4In6() {
				t.Fatalf("invalid socket %+v", s)
			}
			_ = s.String()
		}
	})
}
