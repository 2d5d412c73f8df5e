package control

import (
	"net/netip"
	"testing"

	"github.com/usnetd/usnetd/internal/sockdiag"
)

// TestSetAddrs: QueryUsedPorts lists a kernel socket on the wildcard
// address under the interface's addresses as SetAddrs last gave them.
func TestSetAddrs(t *testing.T) {
	e := newEnv(t)
	c := newRawClient(t, e.path, e.dir)
	ap := netip.MustParseAddrPort
	e.setKernelSockets(sockdiag.Socket{Proto: sockdiag.ProtoTCP, Local: ap("0.0.0.0:5432"), Remote: ap("0.0.0.0:0"), State: sockdiag.TCPListen})
	want := `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22],[6,{"Ipv4":"198.18.0.1"},5432]],"connected":[]}}`
	if got := c.ask(`"QueryUsedPorts"`); got != want {
		t.Errorf("before SetAddrs:\n got %s\nwant %s", got, want)
	}
	e.srv.SetAddrs("eth0", []netip.Addr{netip.MustParseAddr("198.18.0.9")})
	e.srv.SetAddrs("nosuch0", []netip.Addr{netip.MustParseAddr("198.18.0.10")}) // ignored
	// The DEBUG_PORTS rule (22) is the table's: the daemon moves it.
	want = `{"QueryUsedPortsAnswer":{"listening":[[6,{"Ipv4":"198.18.0.1"},22],[6,{"Ipv4":"198.18.0.9"},5432]],"connected":[]}}`
	if got := c.ask(`"QueryUsedPorts"`); got != want {
		t.Errorf("after SetAddrs:\n got %s\nwant %s", got, want)
	}
}
