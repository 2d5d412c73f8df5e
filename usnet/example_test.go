package usnet_test

import (
	"fmt"
	"io"
	"log"
	"net/http"

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
