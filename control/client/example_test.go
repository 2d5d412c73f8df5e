package client_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
)

// Attach a userspace stack of your own: ask for a packet channel on the NIC
// (one Ethernet frame per datagram on the returned socket) and register the
// port whose frames it wants. The rule goes when the client closes.
func ExampleDial() {
	c, err := client.Dial(client.Options{}) // /run/usnetd.socket
	if err != nil {
		log.Fatal(err) // errors.Is(err, client.ErrNotRunning), ErrAccessDenied, ...
	}
	defer c.Close()
	ch, err := c.RequestUDS("eth0")
	if err != nil {
		log.Fatal(err)
	}
	defer ch.Close()
	port := uint16(8443)
	err = c.AddMatch(wire.Match{DstAddr: netip.MustParseAddr("198.18.0.1"), DstPort: &port, Protocol: 6})
	if err != nil {
		log.Fatal(err) // errors.Is(err, client.ErrRefused): the port is taken
	}
	frame := make([]byte, 65536)
	n, err := ch.Read(frame) // the first frame for TCP 198.18.0.1:8443
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d-byte frame\n", n)
}

// Which ports are in use on the shared address, by the kernel and by
// endpoints, as usnetd answers the original's QueryUsedPorts.
func ExampleClient_QueryUsedPorts() {
	c, err := client.Dial(client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	used, err := c.QueryUsedPorts()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(used.Listening), "listening,", len(used.Connected), "connected")
}
