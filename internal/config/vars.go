package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/rs/zerolog"

	"github.com/usnetd/usnetd/control/wire"
	l4 "github.com/usnetd/usnetd/switch"
)

// variable is one row of the table: everything usnetd knows about one
// environment variable. Validation (Load), `usnetd -h` (Usage) and the README
// (MarkdownTable) all read this table and nothing else.
type variable struct {
	Name     string
	Required bool
	// Default is the value parsed when the variable is unset or empty.
	Default string
	// DefaultText, if set, is shown instead of Default (for defaults that
	// depend on something else).
	DefaultText string
	// EmptyDisables: an empty value is a value of its own (it switches the
	// feature off) rather than "use the default".
	EmptyDisables bool
	Allowed       string // what the variable accepts; quoted in every *Error
	Meaning       string

	// parse checks value and stores it into st.cfg. An *Error it returns
	// has Value and Reason set; Load fills in the rest. It may read the
	// fields that earlier rows have filled: the order of rows matters.
	parse func(st *state, value string) *Error
}

const (
	specAllowed = "comma-separated IF:TCP:PORT, IF:UDP:PORT or IF:ICMP, each optionally :REMOTEIP " +
		"(IPv4, or IPv6 bare or in [brackets]); IF one of INTERFACES, PORT 1..65535, protocol in any case"
	boolAllowed  = "true or false (also 1/0, yes/no)"
	levelAllowed = "error, warn, info, debug, trace"
)

// variables is the table. Keep rows that others depend on first:
// INTERFACES before DEBUG_PORTS and STATIC_PIPES, DEBUG_PORTS before
// STATIC_PIPES, RUST_LOG before LOG_LEVEL, RING_SIZE before BATCH_SIZE.
var variables = []variable{
	{
		Name:     "INTERFACES",
		Required: true,
		Allowed:  "comma-separated Linux interface names (1..15 bytes, no '/', ':' or whitespace), no duplicates",
		Meaning:  "NICs to claim",
		parse:    parseInterfaces,
	},
	{
		Name:    "ALLOW_GID",
		Allowed: "a numeric group ID 0..4294967294",
		Meaning: "group that may use the control socket (chown to it, mode 0770); unset: root only",
		parse: func(st *state, v string) *Error {
			if v == "" {
				return nil
			}
			n, ok := parseUint(v, 1<<32-2) // (gid_t)-1 means "leave unchanged" to chown
			if !ok {
				return &Error{Value: v, Reason: "not a group ID"}
			}
			st.cfg.AllowGID, st.cfg.HasAllowGID = uint32(n), true
			return nil
		},
	},
	{
		Name:    "DEBUG_PORTS",
		Allowed: specAllowed,
		Meaning: "ports opened for the kernel, as sticky rules (never expired) on each of the interface's IPv4 and global IPv6 addresses, following them as they change; with REMOTEIP only that remote reaches the port",
		parse: func(st *state, v string) *Error {
			specs, e := parseSpecs(st, v, nil, "")
			st.cfg.DebugPorts = specs
			return e
		},
	},
	{
		Name:    "STATIC_PIPES",
		Allowed: specAllowed,
		Meaning: "static packet channels without the control protocol: per item a Unix datagram socket PIPE_DIR/IF-PROTO-PORT[-REMOTEIP] (one Ethernet frame per datagram, answered to the last named sender; group ALLOW_GID, mode 0660) owning the item's rule on each of the interface's IPv4 and global IPv6 addresses",
		parse: func(st *state, v string) *Error {
			specs, e := parseSpecs(st, v, st.cfg.DebugPorts, "DEBUG_PORTS")
			st.cfg.StaticPipes = specs
			return e
		},
	},
	{
		Name:    "PIPE_DIR",
		Default: "/run/usnetd/pipes",
		Allowed: "an absolute directory path, short enough that every STATIC_PIPES socket path fits 107 bytes",
		Meaning: "directory of the STATIC_PIPES sockets (made, mode 0755, if missing)",
		parse:   parsePipeDir,
	},
	{
		Name:    "ADD_MACS",
		Allowed: fmt.Sprintf("comma-separated unicast MACs aa:bb:cc:dd:ee:ff (or with '-'), no duplicates, at most %d", l4.MaxLocalMACs-1),
		Meaning: "MACs of endpoints with a MAC of their own: frames to them are switched locally, and only with one of these (or the NIC's) as source MAC may an endpoint send",
		parse:   parseMACs,
	},
	{
		Name:    "ENDPOINT_ADDRS",
		Allowed: "comma-separated IF:ADDR, ADDR a unicast IPv4 or IPv6 address (bare or in [brackets], no zone), IF one of INTERFACES, no duplicates",
		Meaning: "addresses that endpoints on IF may use besides the interface's own (AddMatch, source address), for endpoints with an address of their own",
		parse:   parseEndpointAddrs,
	},
	{
		Name:    "NO_HOST_RINGS",
		Default: "false",
		Allowed: boolAllowed,
		Meaning: "true: no kernel path at all",
		parse:   boolVar(func(c *Config) *bool { return &c.NoHostRings }),
	},
	{
		Name:    "KEEP_FIREWALL",
		Default: "false",
		Allowed: boolAllowed,
		Meaning: "true: a clean stop (SIGTERM) leaves the kernel's firewall attached and pinned, so the kernel stays filtered until the next usnetd takes it over; false: a clean stop removes it",
		parse:   boolVar(func(c *Config) *bool { return &c.KeepFirewall }),
	},
	{
		Name:    "NO_ZERO_COPY",
		Default: "false",
		Allowed: boolAllowed,
		Meaning: "true: copy frames even where zero-copy is possible",
		parse:   boolVar(func(c *Config) *bool { return &c.NoZeroCopy }),
	},
	{
		Name:    "PCAP_LOG",
		Allowed: "a file path (relative to the working directory unless absolute)",
		Meaning: "write every frame usnetd receives to this pcapng file: as interface the port it came from, as comment the verdict (forward to PORT, flood, uplink, drop: REASON)",
		parse: func(st *state, v string) *Error {
			if strings.HasSuffix(v, "/") {
				return &Error{Value: v, Reason: "names a directory, not a file"}
			}
			st.cfg.PCAPLog = v
			return nil
		},
	},
	{
		Name:        "RUST_LOG",
		DefaultText: "info",
		Allowed:     levelAllowed,
		Meaning:     "log level, as in the original; ignored when LOG_LEVEL is set",
		parse: func(st *state, v string) *Error {
			if l, _, _ := st.lookup("LOG_LEVEL"); l != "" || v == "" {
				return nil
			}
			return parseLevel(st, v)
		},
	},
	{
		Name:        "LOG_LEVEL",
		DefaultText: "RUST_LOG, else info",
		Allowed:     levelAllowed,
		Meaning:     "log level",
		parse: func(st *state, v string) *Error {
			if v == "" {
				return nil
			}
			return parseLevel(st, v)
		},
	},
	{
		Name:        "LOG_FORMAT",
		DefaultText: "console if stderr is a terminal, else json",
		Allowed:     "console, json",
		Meaning:     "log format: human-readable lines or one JSON object per line",
		parse: func(st *state, v string) *Error {
			switch lowerASCII(v) {
			case "":
				st.cfg.LogFormat = LogJSON
				if st.isTerminal() {
					st.cfg.LogFormat = LogConsole
				}
			case string(LogConsole), string(LogJSON):
				st.cfg.LogFormat = LogFormat(lowerASCII(v))
			default:
				return &Error{Value: v, Reason: "unknown log format"}
			}
			return nil
		},
	},
	{
		Name:    "BACKEND",
		Default: string(BackendAuto),
		Allowed: "auto, afxdp, afpacket, macvtap",
		Meaning: "how frames move between NIC and usnetd; auto: afxdp where the kernel has AF_XDP, else afpacket",
		parse: func(st *state, v string) *Error {
			switch b := Backend(lowerASCII(v)); b {
			case BackendAuto, BackendAFXDP, BackendAFPacket, BackendMacvtap:
				st.cfg.Backend = b
				return nil
			}
			return &Error{Value: v, Reason: "unknown backend"}
		},
	},
	{
		Name:    "XDP_MODE",
		Default: "auto",
		Allowed: "auto, native, generic",
		Meaning: "how the XDP program attaches with BACKEND=afxdp; auto: native (in the driver), generic where the driver refuses",
		parse: func(st *state, v string) *Error {
			switch m := lowerASCII(v); m {
			case "auto", "native", "generic":
				st.cfg.XDPMode = m
				return nil
			}
			return &Error{Value: v, Reason: "unknown XDP mode"}
		},
	},
	{
		Name:    "WORKERS",
		Default: "0",
		Allowed: "0..256",
		Meaning: "RX workers; 0: one per NIC queue",
		parse:   intVar(0, 256, func(c *Config) *int { return &c.Workers }),
	},
	{
		Name:    "CPUS",
		Allowed: "a CPU list like 0-3,6,8-9; each CPU 0..1023, none twice",
		Meaning: "CPUs to pin the workers to, in this order; empty: no pinning",
		parse:   parseCPUs,
	},
	{
		Name:    "RING_SIZE",
		Default: "1024",
		Allowed: "a power of two 64..65536",
		Meaning: "frames per ring (rings between workers, and the backends' rings)",
		parse: func(st *state, v string) *Error {
			if e := intVar(64, 65536, func(c *Config) *int { return &c.RingSize })(st, v); e != nil {
				return e
			}
			if n := st.cfg.RingSize; n&(n-1) != 0 {
				return &Error{Value: v, Reason: "not a power of two"}
			}
			return nil
		},
	},
	{
		Name:    "BATCH_SIZE",
		Default: "64",
		Allowed: "1..256, at most RING_SIZE",
		Meaning: "frames moved per batch",
		parse: func(st *state, v string) *Error {
			if e := intVar(1, 256, func(c *Config) *int { return &c.BatchSize })(st, v); e != nil {
				return e
			}
			if st.cfg.BatchSize > st.cfg.RingSize {
				return &Error{Value: v, Reason: fmt.Sprintf("larger than RING_SIZE (%d)", st.cfg.RingSize)}
			}
			return nil
		},
	},
	{
		Name:    "SOCKET_PATH",
		Default: wire.DefaultSocketPath,
		Allowed: "an absolute path of at most 107 bytes, or @NAME (at most 107 bytes) for an abstract socket",
		Meaning: "the control socket",
		parse:   parseSocketPath,
	},
	{
		Name:          "METRICS_ADDR",
		Default:       "127.0.0.1:9464",
		EmptyDisables: true,
		Allowed:       "HOST:PORT with PORT 1..65535 and HOST an IP address (IPv6 in [brackets]), a host name or empty for all addresses; or empty",
		Meaning:       "listen address of the Prometheus /metrics server; empty: no metrics server",
		parse:         parseMetricsAddr,
	},
	{
		Name:    "MAX_RULES_PER_CLIENT",
		Default: "1024",
		Allowed: "1..1048576",
		Meaning: "rules (AddMatch and learned) one control-socket client may hold",
		parse:   intVar(1, 1<<20, func(c *Config) *int { return &c.MaxRulesPerClient }),
	},
	{
		Name:    "MAX_CHANNELS_PER_CLIENT",
		Default: "16",
		Allowed: "1..1024",
		Meaning: "packet channels (RequestUDS) one control-socket client may hold",
		parse:   intVar(1, 1024, func(c *Config) *int { return &c.MaxChannelsPerClient }),
	},
	{
		Name:    "MAX_CLIENTS",
		Default: "1024",
		Allowed: "1..65536",
		Meaning: "control-socket clients (endpoints: a client socket and its process) at once, all users together",
		parse:   intVar(1, 1<<16, func(c *Config) *int { return &c.MaxClients }),
	},
	{
		Name:    "MAX_CLIENTS_PER_UID",
		Default: "256",
		Allowed: "1..65536",
		Meaning: "control-socket clients at once of one user (uid)",
		parse:   intVar(1, 1<<16, func(c *Config) *int { return &c.MaxClientsPerUID }),
	},
	{
		Name:    "MAX_CHANNELS",
		Default: "2048",
		Allowed: "1..65536",
		Meaning: "packet channels at once, all clients together",
		parse:   intVar(1, 1<<16, func(c *Config) *int { return &c.MaxChannels }),
	},
	{
		Name:    "MAX_CHANNELS_PER_UID",
		Default: "1024",
		Allowed: "1..65536",
		Meaning: "packet channels at once of one user (uid)",
		parse:   intVar(1, 1<<16, func(c *Config) *int { return &c.MaxChannelsPerUID }),
	},
	{
		Name:    "MAX_RULES",
		Default: "262144",
		Allowed: "1..16777216",
		Meaning: "rules (AddMatch and learned) of all clients together, per interface",
		parse:   intVar(1, 1<<24, func(c *Config) *int { return &c.MaxRules }),
	},
	{
		Name:    "MAX_RULES_PER_UID",
		Default: "65536",
		Allowed: "1..16777216",
		Meaning: "rules (AddMatch and learned) of one user's clients together, per interface",
		parse:   intVar(1, 1<<24, func(c *Config) *int { return &c.MaxRulesPerUID }),
	},
	{
		Name:    "MEMORY_LIMIT",
		Default: "256MiB",
		Allowed: "a size: a whole number with the unit B, KiB, MiB or GiB (powers of 1024), 32MiB..1024GiB",
		Meaning: "memory usnetd may use: a quarter of it is the frame buffers (split between INTERFACES; a NIC's receive path keeps a quarter of its own, channels and held fragments are bounded within the rest), a quarter the shared-memory channels' rings (beyond it, Unix datagram channels), and all of it is the Go runtime's soft memory limit",
		parse:   parseMemoryLimit,
	},
}

// parseMemoryLimit parses MEMORY_LIMIT, e.g. 256MiB.
func parseMemoryLimit(st *state, v string) *Error {
	num := strings.TrimRight(v, "BKMGi")
	unit := v[len(num):]
	shift := map[string]uint{"B": 0, "KiB": 10, "MiB": 20, "GiB": 30}
	sh, ok := shift[unit]
	if !ok {
		return &Error{Value: v, Reason: "needs a unit: B, KiB, MiB or GiB"}
	}
	n, ok := parseUint(num, 1<<40)
	if !ok {
		return &Error{Value: v, Reason: "not a whole number with a unit"}
	}
	const lo, hi = 32 << 20, 1 << 40
	if n > hi>>sh || n<<sh < lo {
		return &Error{Value: v, Reason: "out of range 32MiB..1024GiB"}
	}
	st.cfg.MemoryLimit = int64(n << sh)
	return nil
}

// lookupVar returns the row named name, or nil.
func lookupVar(name string) *variable {
	for i := range variables {
		if variables[i].Name == name {
			return &variables[i]
		}
	}
	return nil
}

// splitList splits a comma-separated list and trims blanks around each
// item. An empty value is the empty list; an empty item is an error.
func splitList(v string) ([]string, *Error) {
	if v == "" {
		return nil, nil
	}
	items := strings.Split(v, ",")
	for i, it := range items {
		items[i] = trimBlanks(it)
		if items[i] == "" {
			return nil, &Error{Value: v, Reason: fmt.Sprintf("item %d of the list is empty", i+1)}
		}
	}
	return items, nil
}

func parseInterfaces(st *state, v string) *Error {
	items, e := splitList(v)
	if e != nil {
		return e
	}
	for i, name := range items {
		if reason := checkIfName(name); reason != "" {
			return &Error{Value: name, Reason: reason}
		}
		if slices.Contains(items[:i], name) {
			return &Error{Value: name, Reason: "listed twice"}
		}
	}
	st.cfg.Interfaces = items
	return nil
}

// parseSpecs parses a list of PortSpec. An item must not repeat, nor be in
// other (the specs of the variable named otherName).
func parseSpecs(st *state, v string, other []PortSpec, otherName string) ([]PortSpec, *Error) {
	items, e := splitList(v)
	if e != nil {
		return nil, e
	}
	var specs []PortSpec
	for _, it := range items {
		p, reason := parsePortSpec(it)
		switch {
		case reason != "":
		case !slices.Contains(st.cfg.Interfaces, p.Interface):
			reason = fmt.Sprintf("interface %q is not in INTERFACES", p.Interface)
		case slices.Contains(specs, p):
			reason = "listed twice"
		case slices.Contains(other, p):
			reason = "also in " + otherName + ": a rule has one owner"
		}
		if reason != "" {
			return nil, &Error{Value: it, Reason: reason}
		}
		specs = append(specs, p)
	}
	return specs, nil
}

func parsePipeDir(st *state, v string) *Error {
	if v == "" || v[0] != '/' {
		return &Error{Value: v, Reason: "not an absolute path"}
	}
	v = strings.TrimRight(v, "/")
	if v == "" {
		v = "/"
	}
	for _, s := range st.cfg.StaticPipes {
		if p := pipePath(v, s); len(p) > maxSocketPath {
			return &Error{Value: v, Reason: fmt.Sprintf("the socket path %s of STATIC_PIPES item %s is longer than %d bytes", p, s, maxSocketPath)}
		}
	}
	st.cfg.PipeDir = v
	return nil
}

func parseMACs(st *state, v string) *Error {
	items, e := splitList(v)
	if e != nil {
		return e
	}
	var macs []l4.MAC
	for _, it := range items {
		m, err := l4.ParseMAC(it)
		switch {
		case len(macs) >= l4.MaxLocalMACs-1: // the NIC's MAC is one too
			return &Error{Value: it, Reason: fmt.Sprintf("more than %d MACs", l4.MaxLocalMACs-1)}
		case err != nil:
			return &Error{Value: it, Reason: "not a MAC address"}
		case m.IsMulticast() || m.IsZero():
			return &Error{Value: it, Reason: "not a unicast MAC address"}
		case slices.Contains(macs, m):
			return &Error{Value: it, Reason: "listed twice"}
		}
		macs = append(macs, m)
	}
	st.cfg.AddMACs = macs
	return nil
}

func parseEndpointAddrs(st *state, v string) *Error {
	items, e := splitList(v)
	if e != nil {
		return e
	}
	var addrs []IfAddr
	for _, it := range items {
		ifname, a, ok := strings.Cut(it, ":")
		if !ok {
			return &Error{Value: it, Reason: "not IF:ADDR"}
		}
		bare := a
		bracketed := len(a) >= 2 && a[0] == '[' && a[len(a)-1] == ']'
		if bracketed {
			bare = a[1 : len(a)-1]
		}
		ip, err := netip.ParseAddr(bare)
		reason := ""
		switch {
		case a == "":
			reason = "empty address after ':'"
		case err != nil:
			reason = "not an IPv4 or IPv6 address after ':'"
		case bracketed && ip.Is4():
			reason = "brackets are for IPv6 only"
		case ip.Zone() != "":
			reason = "address must not have a zone"
		case ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.Unmap().IsLoopback() || ip.Unmap().IsMulticast():
			reason = "not a unicast address"
		case !slices.Contains(st.cfg.Interfaces, ifname):
			reason = fmt.Sprintf("interface %q is not in INTERFACES", ifname)
		case slices.Contains(addrs, IfAddr{ifname, ip.Unmap()}):
			reason = "listed twice"
		case len(addrs) >= l4.MaxLocalAddrs/2:
			reason = fmt.Sprintf("more than %d addresses", l4.MaxLocalAddrs/2)
		}
		if reason != "" {
			return &Error{Value: it, Reason: reason}
		}
		addrs = append(addrs, IfAddr{ifname, ip.Unmap()})
	}
	st.cfg.EndpointAddrs = addrs
	return nil
}

func parseCPUs(st *state, v string) *Error {
	items, e := splitList(v)
	if e != nil {
		return e
	}
	const maxCPU = 1023
	var seen [maxCPU + 1]bool
	var cpus []int
	for _, it := range items {
		lo, hi, isRange := strings.Cut(it, "-")
		a, okA := parseUint(lo, maxCPU)
		b, okB := a, okA
		if isRange {
			b, okB = parseUint(hi, maxCPU)
		}
		switch {
		case !okA || !okB:
			return &Error{Value: it, Reason: "not a CPU number 0..1023 or a range N-M of them"}
		case a > b:
			return &Error{Value: it, Reason: "range runs backwards"}
		}
		for c := a; c <= b; c++ {
			if seen[c] {
				return &Error{Value: it, Reason: fmt.Sprintf("CPU %d listed twice", c)}
			}
			seen[c] = true
			cpus = append(cpus, int(c))
		}
	}
	st.cfg.CPUs = cpus
	return nil
}

// maxSocketPath is sizeof(sun_path) - 1: a path needs its NUL, '@' stands
// for the leading NUL of an abstract name.
const maxSocketPath = 107

func parseSocketPath(st *state, v string) *Error {
	const maxPath = maxSocketPath
	switch {
	case v == "": // not reached: empty means the default; kept so that v[0] is safe
		return &Error{Value: v, Reason: "empty path"}
	case len(v) > maxPath:
		return &Error{Value: v, Reason: fmt.Sprintf("longer than %d bytes", maxPath)}
	case v == "@":
		return &Error{Value: v, Reason: "empty abstract socket name"}
	case v[0] == '@':
	case v[0] != '/':
		return &Error{Value: v, Reason: "not an absolute path"}
	case strings.HasSuffix(v, "/"):
		return &Error{Value: v, Reason: "names a directory, not a socket"}
	}
	st.cfg.SocketPath = v
	return nil
}

func parseMetricsAddr(st *state, v string) *Error {
	if v == "" {
		st.cfg.MetricsAddr = ""
		return nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return &Error{Value: v, Reason: "not HOST:PORT"}
	}
	if n, ok := parseUint(port, 65535); !ok || n == 0 {
		return &Error{Value: v, Reason: "port must be 1..65535"}
	}
	if _, err := netip.ParseAddr(host); host != "" && err != nil && !isHostName(host) {
		return &Error{Value: v, Reason: fmt.Sprintf("host %q is neither an IP address nor a host name", host)}
	}
	st.cfg.MetricsAddr = v
	return nil
}

// isHostName reports whether s is a syntactically valid DNS name: labels
// of 1..63 letters, digits and '-', not starting or ending in '-', 253
// bytes at most.
func isHostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
				return false
			}
		}
	}
	return true
}

func parseLevel(st *state, v string) *Error {
	var l zerolog.Level
	switch lowerASCII(v) {
	case "error":
		l = zerolog.ErrorLevel
	case "warn":
		l = zerolog.WarnLevel
	case "info":
		l = zerolog.InfoLevel
	case "debug":
		l = zerolog.DebugLevel
	case "trace":
		l = zerolog.TraceLevel
	default:
		return &Error{Value: v, Reason: "unknown log level"}
	}
	st.cfg.LogLevel = l
	return nil
}

// intVar returns a parse function for an integer lo..hi stored at field(cfg).
func intVar(lo, hi int, field func(*Config) *int) func(*state, string) *Error {
	return func(st *state, v string) *Error {
		n, ok := parseUint(v, uint64(hi))
		if !ok || int(n) < lo {
			if isDigits(v) {
				return &Error{Value: v, Reason: fmt.Sprintf("out of range %d..%d", lo, hi)}
			}
			return &Error{Value: v, Reason: "not a decimal number"}
		}
		*field(st.cfg) = int(n)
		return nil
	}
}

// boolVar returns a parse function for a boolean stored at field(cfg).
func boolVar(field func(*Config) *bool) func(*state, string) *Error {
	return func(st *state, v string) *Error {
		switch lowerASCII(v) {
		case "true", "1", "yes":
			*field(st.cfg) = true
		case "false", "0", "no":
			*field(st.cfg) = false
		default:
			return &Error{Value: v, Reason: "not a boolean"}
		}
		return nil
	}
}

// isDigits reports whether s is a non-empty string of ASCII digits.
func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
