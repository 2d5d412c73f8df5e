package testkit

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/usnetd/usnetd/backends/memory"
	l4 "github.com/usnetd/usnetd/switch"
)

// The NIC of a Domain: its MAC and address, and a remote peer's MAC.
var (
	NICMAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	RemoteMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	NICAddr   = netip.MustParseAddr("198.18.0.1")
)

// DomainOptions tune NewDomain.
type DomainOptions struct {
	// Buffers of the pipeline; 0: 2048.
	Buffers int
	// KernelPorts are TCP ports the kernel port holds as sticky rules
	// (DEBUG_PORTS).
	KernelPorts []uint16
}

// A Domain is the switch domain of one interface "eth0" in memory, what
// a control server runs over in tests: a switch whose local MAC and
// address are the NIC's (NICMAC, NICAddr), a pipeline, an in-memory NIC
// port that keeps what it sends, and an in-memory kernel port.
type Domain struct {
	Switch   *l4.Switch
	Pipeline *l4.Pipeline
	NIC      *memory.Port
	Kernel   l4.Owner
}

// NewDomain builds a Domain; t.Cleanup closes the pipeline.
func NewDomain(t testing.TB, opt DomainOptions) *Domain {
	t.Helper()
	if opt.Buffers == 0 {
		opt.Buffers = 2048
	}
	d := &Domain{Switch: l4.NewSwitch(l4.NewTable(), l4.MAC(NICMAC))}
	d.Switch.SetLocal([]l4.MAC{l4.MAC(NICMAC)}, []l4.Addr{l4.AddrFromNetip(NICAddr)})
	pl, err := l4.NewPipeline(d.Switch, l4.PipelineConfig{Buffers: opt.Buffers})
	if err != nil {
		t.Fatal(err)
	}
	d.Pipeline = pl
	t.Cleanup(func() { pl.Close() })
	d.NIC = memory.New("eth0", l4.PortNIC, memory.Options{Keep: true})
	if _, err := pl.AddPort(d.NIC); err != nil {
		t.Fatal(err)
	}
	if d.Kernel, err = pl.AddPort(memory.New("eth0-kernel", l4.PortKernel, memory.Options{})); err != nil {
		t.Fatal(err)
	}
	for _, p := range opt.KernelPorts {
		r := l4.Rule{Key: l4.ListenKey(l4.AddrFromNetip(NICAddr), l4.ProtoTCP, p), Owner: d.Kernel, Kind: l4.Registered, Sticky: true}
		if err := d.Switch.Table.Insert(r); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// Serve runs serve (a server's Serve method) in a goroutine until the
// test ends; then it cancels serve's context and waits up to 5 s for it
// to return, failing the test if it does not. It returns the channel
// that gets serve's result.
func Serve(t testing.TB, serve func(context.Context) error) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			done <- err
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return done
}
