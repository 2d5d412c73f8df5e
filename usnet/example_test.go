package usnet_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/usnetd/usnetd/usnet"
)

// A net/http server on the userspace stack: the only change from a kernel
// server is the line that makes the listener. Run it with
// USNET_INTERFACE=eth0 and access to usnetd's control socket; the kernel
// keeps every other port of the shared address.
func ExampleListen() {
	ln, err := usnet.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err) // e.g. usnetd is not running, or refused the port
	}
	defer ln.Close()
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from a userspace stack")
	}))
}

// An HTTP client whose connections go through the userspace stack.
func ExampleDialContext() {
	c := &http.Client{Transport: &http.Transport{DialContext: usnet.DialContext}}
	resp, err := c.Get("http://198.18.0.2:8080/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
}

// A stack described in code instead of the environment: its own MAC and
// address (list the MAC in usnetd's ADD_MACS), one UDP socket.
func ExampleConfig() {
	cfg := &usnet.Config{Interface: "eth0", MTU: 1500}
	pc, err := cfg.ListenPacket("udp", "198.18.0.9:5353")
	if err != nil {
		log.Fatal(err)
	}
	defer pc.Close()
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes from %v\n", n, from)
}

// One stack for the life of the program: a server and a client whose
// connections all share one attach to usnetd, with a socket option of
// net.TCPConn on a connection.
func ExampleOpen() {
	st, err := usnet.Open(context.Background(), nil) // the Config from the environment
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close() // closes what is still open and detaches

	ln, err := st.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	}))

	c, err := st.DialTCP(context.Background(), "tcp", "198.18.0.7:9000")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3})
	fmt.Fprintln(c, "ping")
}

// A kernel service on the address the stack shares with the kernel (here
// a database the kernel serves on port 5432 of the NIC's address): the
// dial goes to the kernel, since the stack does not listen on that port,
// while a dial to the stack's own listener on the same address stays in
// the stack.
func ExampleStack_DialTCP_kernelService() {
	st, err := usnet.Open(context.Background(), nil) // passthru: the NIC's addresses
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	shared := st.Addrs()[0].Addr()

	db, err := st.DialTCP(context.Background(), "tcp", netip.AddrPortFrom(shared, 5432).String())
	if err != nil {
		log.Fatal(err) // ECONNREFUSED if the kernel has nothing there
	}
	defer db.Close()
	db.SetNoDelay(false) // the kernel's connection's option
	fmt.Fprintln(db, "query")
}
