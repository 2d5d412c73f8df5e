package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	l4 "github.com/usnetd/usnetd/switch"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

const usage = `usage: usnetctl [--json] [--socket PATH] [--timeout DURATION] COMMAND

Commands:
  status   usnetd's interfaces and endpoints (attached userspace stacks)
  ports    the local ports in use: usnetd's rules and the kernel's sockets
  rules    every rule of the switch, with its owner

Options:
  --json              machine-readable output (one JSON document)
  --socket PATH       usnetd's control socket, a path or @NAME
                      (default: $SOCKET_PATH, else /run/usnetd.socket)
  --timeout DURATION  how long to wait for usnetd's answer (default 5s)

Exit status: 0 done, 1 usnetd not running, access denied or no answer,
2 usage error.
`

// run is usnetctl with its arguments (without the program name), the
// environment and the output streams; it returns the exit status.
func run(args, environ []string, stdout, stderr io.Writer) int {
	socket := wire.DefaultSocketPath
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "SOCKET_PATH="); ok && v != "" {
			socket = v
			break
		}
	}
	fs := flag.NewFlagSet("usnetctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "")
	fs.StringVar(&socket, "socket", socket, "")
	timeout := fs.Duration("timeout", client.DefaultTimeout, "")
	help := fs.Bool("help", false, "")
	fs.BoolVar(help, "h", false, "")
	var cmds []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			fmt.Fprintf(stderr, "usnetctl: %v\n%s", err, usage)
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		cmds = append(cmds, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *help {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if len(cmds) != 1 {
		fmt.Fprintf(stderr, "usnetctl: want one command, got %d\n%s", len(cmds), usage)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "usnetctl: --timeout must be positive\n")
		return 2
	}
	cmd := cmds[0]
	switch cmd {
	case "status", "ports", "rules":
	default:
		fmt.Fprintf(stderr, "usnetctl: unknown command %q\n%s", cmd, usage)
		return 2
	}

	c, err := client.Dial(client.Options{SocketPath: socket, Abstract: true, Timeout: *timeout})
	if err != nil {
		fmt.Fprintf(stderr, "usnetctl: %v\n", err)
		return 1
	}
	defer c.Close()
	var out any
	switch cmd {
	case "status", "rules":
		st, err := c.QueryStatus()
		if err != nil {
			fmt.Fprintf(stderr, "usnetctl: %v\n", explain(err))
			return 1
		}
		if cmd == "status" {
			out = statusOut(st, socket, *asJSON, stdout)
		} else {
			out = rulesOut(st, *asJSON, stdout)
		}
	case "ports":
		up, err := c.QueryUsedPorts()
		if err != nil {
			fmt.Fprintf(stderr, "usnetctl: %v\n", explain(err))
			return 1
		}
		out = portsOut(up, *asJSON, stdout)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "usnetctl: %v\n", err)
			return 1
		}
	}
	return 0
}

// explain adds what a user can do about an error of a request.
func explain(err error) error {
	switch {
	case errors.Is(err, client.ErrTimeout):
		return fmt.Errorf("%w; a usnetd older than usnetctl does not answer QueryStatus (try \"usnetctl ports\")", err)
	case errors.Is(err, client.ErrRefused):
		return fmt.Errorf("%w: are you root or in usnetd's ALLOW_GID group? usnetd's log says why", err)
	}
	return err
}

// The JSON output: plain strings for addresses, the wire's field names
// otherwise.

type matchJSON struct {
	Protocol uint8   `json:"protocol"`
	DstAddr  string  `json:"dst_addr"`
	DstPort  *uint16 `json:"dst_port"`
	SrcAddr  *string `json:"src_addr"`
	SrcPort  *uint16 `json:"src_port"`
}

func toMatchJSON(m wire.Match) matchJSON {
	j := matchJSON{Protocol: m.Protocol, DstAddr: m.DstAddr.String(), DstPort: m.DstPort, SrcPort: m.SrcPort}
	if m.SrcAddr != nil {
		s := m.SrcAddr.String()
		j.SrcAddr = &s
	}
	return j
}

type endpointJSON struct {
	ID        uint64            `json:"id"`
	PID       int32             `json:"pid"`
	UID       uint32            `json:"uid"`
	Address   string            `json:"address"`
	Interface string            `json:"interface"`
	Channels  int               `json:"channels"`
	Kinds     []string          `json:"channel_kinds,omitempty"`
	Rules     []matchJSON       `json:"rules"`
	RxPackets uint64            `json:"rx_packets"`
	TxPackets uint64            `json:"tx_packets"`
	Drops     uint64            `json:"drops"`
	Refused   uint64            `json:"refused"`
	RefusedBy map[string]uint64 `json:"refused_by"`
}

type interfaceJSON struct {
	Name    string `json:"name"`
	Backend string `json:"backend"`
	Queues  int    `json:"queues"`
	XDPMode string `json:"xdp_mode"`
	MTU     int    `json:"mtu,omitempty"`
}

type statusJSON struct {
	Version    string          `json:"version"`
	Socket     string          `json:"socket"`
	Interfaces []interfaceJSON `json:"interfaces"`
	Endpoints  []endpointJSON  `json:"endpoints"`
}

type ruleJSON struct {
	Match  matchJSON `json:"match"`
	Owner  string    `json:"owner"`
	Kind   string    `json:"kind"`
	Sticky bool      `json:"sticky"`
}

type portJSON struct {
	Protocol uint8  `json:"protocol"`
	Address  string `json:"address"`
	Port     uint16 `json:"port"`
}

type portsJSON struct {
	Listening []portJSON `json:"listening"`
	Connected []portJSON `json:"connected"`
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0) }

func statusOut(st wire.Status, socket string, asJSON bool, w io.Writer) any {
	if asJSON {
		j := statusJSON{Version: st.Version, Socket: socket, Interfaces: []interfaceJSON{}, Endpoints: []endpointJSON{}}
		for _, in := range st.Interfaces {
			j.Interfaces = append(j.Interfaces, interfaceJSON(in))
		}
		for _, e := range st.Endpoints {
			ej := endpointJSON{ID: e.ID, PID: e.PID, UID: e.UID, Address: e.Address, Interface: e.Interface,
				Channels: e.Channels, Kinds: e.ChannelKinds, Rules: []matchJSON{}, RxPackets: e.RxPackets, TxPackets: e.TxPackets, Drops: e.Drops, Refused: e.Refused, RefusedBy: e.RefusedBy}
			if ej.RefusedBy == nil {
				ej.RefusedBy = map[string]uint64{}
			}
			for _, m := range e.Rules {
				ej.Rules = append(ej.Rules, toMatchJSON(m))
			}
			j.Endpoints = append(j.Endpoints, ej)
		}
		return j
	}
	fmt.Fprintf(w, "usnetd %s at %s\n\n", orDash(st.Version), socket)
	t := table(w)
	fmt.Fprintln(t, "INTERFACE\tBACKEND\tQUEUES\tXDP MODE")
	for _, in := range st.Interfaces {
		fmt.Fprintf(t, "%s\t%s\t%d\t%s\n", in.Name, orDash(in.Backend), in.Queues, orDash(in.XDPMode))
	}
	t.Flush()
	fmt.Fprintln(w)
	if len(st.Endpoints) == 0 {
		fmt.Fprintln(w, "no endpoints attached")
		return nil
	}
	t = table(w)
	fmt.Fprintln(t, "ENDPOINT\tPID\tUID\tINTERFACE\tCHANNELS\tRULES\tRX\tTX\tDROPS\tREFUSED\tADDRESS")
	for _, e := range st.Endpoints {
		fmt.Fprintf(t, "%d\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", e.ID, e.PID, e.UID, e.Interface, channels(e),
			len(e.Rules), e.RxPackets, e.TxPackets, e.Drops, e.Refused, e.Address)
	}
	t.Flush()
	if slices.ContainsFunc(st.Endpoints, func(e wire.EndpointStatus) bool { return e.Refused > 0 }) {
		fmt.Fprintln(w, "\nREFUSED: frames an endpoint sent that it may not send, by reason:")
		for _, e := range st.Endpoints {
			if e.Refused == 0 {
				continue
			}
			var parts []string
			for _, r := range slices.Sorted(maps.Keys(e.RefusedBy)) {
				parts = append(parts, fmt.Sprintf("%s %d", r, e.RefusedBy[r]))
			}
			fmt.Fprintf(w, "  endpoint %d: %s\n", e.ID, strings.Join(parts, ", "))
		}
	}
	return nil
}

func rulesOut(st wire.Status, asJSON bool, w io.Writer) any {
	if asJSON {
		j := []ruleJSON{}
		for _, r := range st.Rules {
			j = append(j, ruleJSON{Match: toMatchJSON(r.Match), Owner: r.Owner, Kind: r.Kind, Sticky: r.Sticky})
		}
		return j
	}
	if len(st.Rules) == 0 {
		fmt.Fprintln(w, "no rules")
		return nil
	}
	t := table(w)
	fmt.Fprintln(t, "PROTO\tLOCAL\tREMOTE\tOWNER\tKIND\tSTICKY")
	for _, r := range st.Rules {
		m := r.Match
		remote := "*"
		if m.SrcAddr != nil {
			remote = hostPort(*m.SrcAddr, m.SrcPort)
		}
		sticky := "no"
		if r.Sticky {
			sticky = "yes"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", l4.ProtoName(m.Protocol), hostPort(m.DstAddr, m.DstPort), remote, r.Owner, r.Kind, sticky)
	}
	t.Flush()
	return nil
}

func portsOut(up wire.UsedPorts, asJSON bool, w io.Writer) any {
	if asJSON {
		j := portsJSON{Listening: []portJSON{}, Connected: []portJSON{}}
		for _, e := range up.Listening {
			j.Listening = append(j.Listening, portJSON{e.Protocol, e.Addr.String(), e.Port})
		}
		for _, e := range up.Connected {
			j.Connected = append(j.Connected, portJSON{e.Protocol, e.Addr.String(), e.Port})
		}
		return j
	}
	if len(up.Listening)+len(up.Connected) == 0 {
		fmt.Fprintln(w, "no ports in use")
		return nil
	}
	t := table(w)
	fmt.Fprintln(t, "PROTO\tADDRESS\tPORT\tSTATE")
	for _, l := range []struct {
		es    []wire.PortEntry
		state string
	}{{up.Listening, "listening"}, {up.Connected, "connected"}} {
		for _, e := range l.es {
			fmt.Fprintf(t, "%s\t%s\t%d\t%s\n", l4.ProtoName(e.Protocol), e.Addr, e.Port, l.state)
		}
	}
	t.Flush()
	return nil
}

func hostPort(a netip.Addr, port *uint16) string {
	h := a.String()
	if port == nil {
		return h
	}
	if a.Is6() {
		h = "[" + h + "]"
	}
	return h + ":" + strconv.Itoa(int(*port))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// channels is the CHANNELS column: the count, and each channel's kind
// ("2 shm,uds") where usnetd says them.
func channels(e wire.EndpointStatus) string {
	if len(e.ChannelKinds) == 0 {
		return strconv.Itoa(e.Channels)
	}
	return strconv.Itoa(e.Channels) + " " + strings.Join(e.ChannelKinds, ",")
}
