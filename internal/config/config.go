package config

import (
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	l4 "github.com/usnetd/usnetd/switch"
)

// Config is the validated configuration of usnetd. Load fills every field,
// defaults included; vars.go says what each variable accepts.
type Config struct {
	Interfaces  []string   // INTERFACES: at least one, no duplicates
	AllowGID    uint32     // ALLOW_GID, valid when HasAllowGID
	HasAllowGID bool       // ALLOW_GID was given
	DebugPorts  []PortSpec // DEBUG_PORTS: sticky kernel rules
	StaticPipes []PortSpec // STATIC_PIPES: one static channel per item
	PipeDir     string     // PIPE_DIR: absolute, no trailing '/'
	AddMACs     []l4.MAC   // ADD_MACS: unicast, no duplicates
	// ENDPOINT_ADDRS: addresses granted to endpoints, per interface.
	EndpointAddrs []IfAddr
	NoHostRings   bool   // NO_HOST_RINGS: no kernel path at all
	NoZeroCopy    bool   // NO_ZERO_COPY: always copy frames
	KeepFirewall  bool   // KEEP_FIREWALL: leave the firewall attached after a clean stop
	PCAPLog       string // PCAP_LOG: pcap file path, "" for none

	LogLevel  zerolog.Level // LOG_LEVEL, else RUST_LOG, else info
	LogFormat LogFormat     // LOG_FORMAT, resolved: never empty

	Backend   Backend // BACKEND
	XDPMode   string  // XDP_MODE: "auto", "native" or "generic"
	Workers   int     // WORKERS: 0 = one per NIC queue, else 1..256
	CPUs      []int   // CPUS: CPUs to pin workers to, in the order given; nil = no pinning
	RingSize  int     // RING_SIZE: power of two 64..65536
	BatchSize int     // BATCH_SIZE: 1..256, at most RingSize

	SocketPath  string // SOCKET_PATH: absolute path, or "@name" for an abstract socket
	MetricsAddr string // METRICS_ADDR: host:port, "" = no metrics server

	MaxRulesPerClient    int // MAX_RULES_PER_CLIENT
	MaxChannelsPerClient int // MAX_CHANNELS_PER_CLIENT
	MaxClients           int // MAX_CLIENTS
	MaxClientsPerUID     int // MAX_CLIENTS_PER_UID
	MaxChannels          int // MAX_CHANNELS
	MaxChannelsPerUID    int // MAX_CHANNELS_PER_UID
	MaxRules             int // MAX_RULES
	MaxRulesPerUID       int // MAX_RULES_PER_UID

	MemoryLimit int64 // MEMORY_LIMIT, bytes
}

// IfAddr is an address on an interface (ENDPOINT_ADDRS).
type IfAddr struct {
	Interface string
	Addr      netip.Addr // unicast, unmapped, no zone
}

// EndpointAddrsOf returns the addresses ENDPOINT_ADDRS grants on ifname.
func (c *Config) EndpointAddrsOf(ifname string) []netip.Addr {
	var as []netip.Addr
	for _, a := range c.EndpointAddrs {
		if a.Interface == ifname {
			as = append(as, a.Addr)
		}
	}
	return as
}

// Backend is the way frames are moved between the NIC and usnetd.
type Backend string

// The values of BACKEND.
const (
	BackendAuto     Backend = "auto"
	BackendAFXDP    Backend = "afxdp"
	BackendAFPacket Backend = "afpacket"
	BackendMacvtap  Backend = "macvtap"
)

// LogFormat is the format of the log.
type LogFormat string

// The values of LOG_FORMAT.
const (
	LogConsole LogFormat = "console" // human-readable lines
	LogJSON    LogFormat = "json"    // one JSON object per line
)

// Loader loads a Config. The zero Loader is ready to use.
type Loader struct {
	// IsTerminal reports whether the log goes to a terminal; it picks the
	// default of LOG_FORMAT. Nil means IsTerminal(os.Stderr).
	IsTerminal func() bool
}

// Load is (&Loader{}).Load.
func Load(environ []string, confFile string) (*Config, error) {
	return (&Loader{}).Load(environ, confFile)
}

// Load reads the variables of the table in vars.go from environ (KEY=VALUE
// strings as os.Environ returns them; the first of duplicate keys counts, as
// for os.Getenv) and, for a variable that environ lacks, from the dotenv file
// confFile ("" for none; see ParseDotenv). Variables that usnetd does not
// know are ignored, except in confFile, where a name that differs from a
// known one only by case or by a typo of up to two letters is an error.
//
// A variable set to the empty string counts as set (an empty value in the
// environment hides the file's) and means its default, except METRICS_ADDR,
// where empty disables the metrics server.
//
// Load checks every value and returns the first bad one as an *Error, or a
// *SyntaxError for a malformed confFile, or an error naming confFile if it
// cannot be read. It never returns a partly valid Config.
func (l *Loader) Load(environ []string, confFile string) (*Config, error) {
	env := make(map[string]string)
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if _, dup := env[k]; !dup {
				env[k] = v
			}
		}
	}
	var file map[string]dotenvEntry
	if confFile != "" {
		var err error
		if file, err = readDotenv(confFile); err != nil {
			return nil, err
		}
		if err := checkUnknown(file, confFile); err != nil {
			return nil, err
		}
	}
	st := &state{
		cfg:        &Config{LogLevel: zerolog.InfoLevel},
		isTerminal: l.IsTerminal,
		lookup: func(name string) (value, source string, ok bool) {
			if v, ok := env[name]; ok {
				return v, "", true
			}
			if e, ok := file[name]; ok {
				return e.value, confFile + ":" + strconv.Itoa(e.line), true
			}
			return "", "", false
		},
	}
	if st.isTerminal == nil {
		st.isTerminal = func() bool { return IsTerminal(os.Stderr) }
	}
	for i := range variables {
		v := &variables[i]
		value, source, set := st.lookup(v.Name)
		if !set || value == "" && !v.EmptyDisables {
			value, source = v.Default, ""
		}
		var e *Error
		switch {
		case v.Required && value == "" && !set:
			e = &Error{Reason: "required, but not set"}
		case v.Required && value == "":
			e = &Error{Reason: "required, but empty"}
		default:
			e = v.parse(st, value)
		}
		if e != nil {
			e.Var, e.Allowed, e.Source = v.Name, v.Allowed, source
			return nil, e
		}
	}
	return st.cfg, nil
}

// state is what the parse functions of the table work on.
type state struct {
	cfg        *Config
	isTerminal func() bool
	// lookup returns the raw value of a variable and where it came from
	// ("" for the environment).
	lookup func(name string) (value, source string, ok bool)
}

// checkUnknown rejects a key of the file that looks like a misspelt
// variable: a wrong case or up to two wrong, missing or extra letters.
func checkUnknown(file map[string]dotenvEntry, name string) error {
	var first *SyntaxError
	for key, e := range file {
		if lookupVar(key) != nil {
			continue
		}
		for i := range variables {
			known := variables[i].Name
			if d := editDistance(upperASCII(key), known); d <= 2 && d < len(known)/2 {
				if first == nil || e.line < first.Line {
					first = &SyntaxError{File: name, Line: e.line,
						Reason: "unknown variable " + key + ", did you mean " + known + "?"}
				}
				break
			}
		}
	}
	if first != nil {
		return first
	}
	return nil
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b)) // long keys are no typo of ours
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// IsTerminal reports whether w is a terminal (an *os.File for which the
// TCGETS ioctl works).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
