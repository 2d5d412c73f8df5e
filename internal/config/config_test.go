package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	l4 "github.com/usnetd/usnetd/switch"
)

// load runs Load on a non-terminal with env; INTERFACES=eth0,eth1 is
// added when env lacks INTERFACES.
func load(env ...string) (*Config, error) {
	hasIf := false
	for _, kv := range env {
		hasIf = hasIf || strings.HasPrefix(kv, "INTERFACES=")
	}
	if !hasIf {
		env = append(env, "INTERFACES=eth0,eth1")
	}
	return (&Loader{IsTerminal: func() bool { return false }}).Load(env, "")
}

func TestDefaults(t *testing.T) {
	got, err := load("INTERFACES=eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Interfaces:           []string{"eth0"},
		LogLevel:             zerolog.InfoLevel,
		LogFormat:            LogJSON,
		Backend:              BackendAuto,
		XDPMode:              "auto",
		RingSize:             1024,
		BatchSize:            64,
		SocketPath:           "/run/usnetd.socket",
		PipeDir:              "/run/usnetd/pipes",
		MetricsAddr:          "127.0.0.1:9464",
		MaxRulesPerClient:    1024,
		MaxChannelsPerClient: 16,
		MaxClients:           1024,
		MaxClientsPerUID:     256,
		MaxChannels:          2048,
		MaxChannelsPerUID:    1024,
		MaxRules:             262144,
		MaxRulesPerUID:       65536,
		MemoryLimit:          256 << 20,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}
}

func spec(ifname string, proto uint8, port uint16, remote string) PortSpec {
	p := PortSpec{Interface: ifname, Proto: proto, Port: port}
	if remote != "" {
		p.Remote = netip.MustParseAddr(remote)
	}
	return p
}

func mac(s string) l4.MAC {
	m, err := l4.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestGoodValues(t *testing.T) {
	tests := []struct {
		env   string
		field func(*Config) any
		want  any
	}{
		{"INTERFACES=eth0", func(c *Config) any { return c.Interfaces }, []string{"eth0"}},
		{"INTERFACES= eth0 ,\tenp1s0f0 ,wlan0", func(c *Config) any { return c.Interfaces }, []string{"eth0", "enp1s0f0", "wlan0"}},
		{"INTERFACES=abcdefghijklmno", func(c *Config) any { return c.Interfaces }, []string{"abcdefghijklmno"}},
		{"INTERFACES=br-lan.10,veth@x", func(c *Config) any { return c.Interfaces }, []string{"br-lan.10", "veth@x"}},

		{"ALLOW_GID=1000", func(c *Config) any { return [2]any{c.AllowGID, c.HasAllowGID} }, [2]any{uint32(1000), true}},
		{"ALLOW_GID=0", func(c *Config) any { return [2]any{c.AllowGID, c.HasAllowGID} }, [2]any{uint32(0), true}},
		{"ALLOW_GID=4294967294", func(c *Config) any { return c.AllowGID }, uint32(4294967294)},
		{"ALLOW_GID=", func(c *Config) any { return c.HasAllowGID }, false},

		{"DEBUG_PORTS=eth0:TCP:22", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoTCP, 22, "")}},
		{"DEBUG_PORTS=eth0:tcp:22, eth1:Udp:53,eth0:icmp", func(c *Config) any { return c.DebugPorts },
			[]PortSpec{spec("eth0", ProtoTCP, 22, ""), spec("eth1", ProtoUDP, 53, ""), spec("eth0", ProtoICMP, 0, "")}},
		{"DEBUG_PORTS=eth0:TCP:65535:198.18.0.9", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoTCP, 65535, "198.18.0.9")}},
		{"DEBUG_PORTS=eth0:TCP:22:[2001:db8::1]", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoTCP, 22, "2001:db8::1")}},
		{"DEBUG_PORTS=eth0:TCP:22:2001:db8::1", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoTCP, 22, "2001:db8::1")}},
		{"DEBUG_PORTS=eth0:ICMP:2001:db8::1", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoICMP, 0, "2001:db8::1")}},
		{"DEBUG_PORTS=eth0:ICMP:[::1]", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoICMP, 0, "::1")}},
		{"DEBUG_PORTS=eth0:UDP:53:[::ffff:198.18.0.1]", func(c *Config) any { return c.DebugPorts }, []PortSpec{spec("eth0", ProtoUDP, 53, "198.18.0.1")}},
		{"DEBUG_PORTS=eth0:TCP:22,eth0:TCP:22:198.18.0.1", func(c *Config) any { return len(c.DebugPorts) }, 2},
		{"DEBUG_PORTS=", func(c *Config) any { return c.DebugPorts }, []PortSpec(nil)},

		{"STATIC_PIPES=eth1:UDP:4789", func(c *Config) any { return c.StaticPipes }, []PortSpec{spec("eth1", ProtoUDP, 4789, "")}},
		{"STATIC_PIPES=eth1:UDP:4789", func(c *Config) any { return c.PipePath(c.StaticPipes[0]) }, "/run/usnetd/pipes/eth1-udp-4789"},
		{"PIPE_DIR=/srv/p//", func(c *Config) any { return c.PipePath(spec("eth0", ProtoICMP, 0, "198.18.0.7")) }, "/srv/p/eth0-icmp-198.18.0.7"},
		{"STATIC_PIPES=eth0:tcp:22:[2001:db8::1]", func(c *Config) any { return c.StaticPipes[0].PipeName() }, "eth0-tcp-22-2001:db8::1"},
		{"PIPE_DIR=/", func(c *Config) any { return c.PipeDir }, "/"},

		{"ADD_MACS=02:00:00:00:00:01,02-00-00-00-00-0A", func(c *Config) any { return c.AddMACs },
			[]l4.MAC{mac("02:00:00:00:00:01"), mac("02:00:00:00:00:0a")}},
		{"ENDPOINT_ADDRS=eth0:198.18.0.9,eth1:2001:db8::9,eth0:[fe80::9],eth0:::ffff:198.18.0.10", func(c *Config) any { return c.EndpointAddrs },
			[]IfAddr{{"eth0", netip.MustParseAddr("198.18.0.9")}, {"eth1", netip.MustParseAddr("2001:db8::9")},
				{"eth0", netip.MustParseAddr("fe80::9")}, {"eth0", netip.MustParseAddr("198.18.0.10")}}},
		{"ENDPOINT_ADDRS=eth0:198.18.0.9,eth1:198.18.0.9", func(c *Config) any { return c.EndpointAddrsOf("eth1") }, []netip.Addr{netip.MustParseAddr("198.18.0.9")}},

		{"NO_HOST_RINGS=true", func(c *Config) any { return c.NoHostRings }, true},
		{"NO_HOST_RINGS=YES", func(c *Config) any { return c.NoHostRings }, true},
		{"NO_HOST_RINGS=1", func(c *Config) any { return c.NoHostRings }, true},
		{"NO_HOST_RINGS=False", func(c *Config) any { return c.NoHostRings }, false},
		{"NO_HOST_RINGS=no", func(c *Config) any { return c.NoHostRings }, false},
		{"KEEP_FIREWALL=true", func(c *Config) any { return c.KeepFirewall }, true},
		{"KEEP_FIREWALL=", func(c *Config) any { return c.KeepFirewall }, false},
		{"NO_ZERO_COPY=true", func(c *Config) any { return c.NoZeroCopy }, true},
		{"NO_ZERO_COPY=0", func(c *Config) any { return c.NoZeroCopy }, false},

		{"PCAP_LOG=/var/log/usnetd.pcap", func(c *Config) any { return c.PCAPLog }, "/var/log/usnetd.pcap"},
		{"PCAP_LOG=dump.pcap", func(c *Config) any { return c.PCAPLog }, "dump.pcap"},

		{"RUST_LOG=debug", func(c *Config) any { return c.LogLevel }, zerolog.DebugLevel},
		{"RUST_LOG=TRACE", func(c *Config) any { return c.LogLevel }, zerolog.TraceLevel},
		{"LOG_LEVEL=warn", func(c *Config) any { return c.LogLevel }, zerolog.WarnLevel},
		{"LOG_LEVEL=error", func(c *Config) any { return c.LogLevel }, zerolog.ErrorLevel},
		{"LOG_LEVEL=info", func(c *Config) any { return c.LogLevel }, zerolog.InfoLevel},

		{"LOG_FORMAT=console", func(c *Config) any { return c.LogFormat }, LogConsole},
		{"LOG_FORMAT=JSON", func(c *Config) any { return c.LogFormat }, LogJSON},

		{"BACKEND=afxdp", func(c *Config) any { return c.Backend }, BackendAFXDP},
		{"BACKEND=AFPacket", func(c *Config) any { return c.Backend }, BackendAFPacket},
		{"BACKEND=macvtap", func(c *Config) any { return c.Backend }, BackendMacvtap},
		{"BACKEND=", func(c *Config) any { return c.Backend }, BackendAuto},

		{"WORKERS=0", func(c *Config) any { return c.Workers }, 0},
		{"WORKERS=256", func(c *Config) any { return c.Workers }, 256},
		{"WORKERS=007", func(c *Config) any { return c.Workers }, 7},

		{"CPUS=0-3,6,8-9", func(c *Config) any { return c.CPUs }, []int{0, 1, 2, 3, 6, 8, 9}},
		{"CPUS=5,1023,2", func(c *Config) any { return c.CPUs }, []int{5, 1023, 2}},
		{"CPUS=4-4", func(c *Config) any { return c.CPUs }, []int{4}},
		{"CPUS=", func(c *Config) any { return c.CPUs }, []int(nil)},

		{"RING_SIZE=64", func(c *Config) any { return c.RingSize }, 64},
		{"RING_SIZE=65536", func(c *Config) any { return c.RingSize }, 65536},
		{"BATCH_SIZE=1", func(c *Config) any { return c.BatchSize }, 1},
		{"BATCH_SIZE=256", func(c *Config) any { return c.BatchSize }, 256},

		{"SOCKET_PATH=/tmp/u.sock", func(c *Config) any { return c.SocketPath }, "/tmp/u.sock"},
		{"SOCKET_PATH=@usnetd", func(c *Config) any { return c.SocketPath }, "@usnetd"},
		{"SOCKET_PATH=/" + strings.Repeat("a", 106), func(c *Config) any { return len(c.SocketPath) }, 107},
		{"SOCKET_PATH=", func(c *Config) any { return c.SocketPath }, "/run/usnetd.socket"},

		{"METRICS_ADDR=", func(c *Config) any { return c.MetricsAddr }, ""},
		{"METRICS_ADDR=:9100", func(c *Config) any { return c.MetricsAddr }, ":9100"},
		{"METRICS_ADDR=[::1]:9464", func(c *Config) any { return c.MetricsAddr }, "[::1]:9464"},
		{"METRICS_ADDR=localhost:1", func(c *Config) any { return c.MetricsAddr }, "localhost:1"},
		{"METRICS_ADDR=metrics.example.:65535", func(c *Config) any { return c.MetricsAddr }, "metrics.example.:65535"},

		{"MAX_RULES_PER_CLIENT=1", func(c *Config) any { return c.MaxRulesPerClient }, 1},
		{"MAX_RULES_PER_CLIENT=1048576", func(c *Config) any { return c.MaxRulesPerClient }, 1048576},
		{"MAX_CHANNELS_PER_CLIENT=1024", func(c *Config) any { return c.MaxChannelsPerClient }, 1024},
		{"MAX_CLIENTS=1", func(c *Config) any { return c.MaxClients }, 1},
		{"MAX_CLIENTS_PER_UID=65536", func(c *Config) any { return c.MaxClientsPerUID }, 65536},
		{"MAX_CHANNELS=3000", func(c *Config) any { return c.MaxChannels }, 3000},
		{"MAX_CHANNELS_PER_UID=500", func(c *Config) any { return c.MaxChannelsPerUID }, 500},
		{"MAX_RULES=16777216", func(c *Config) any { return c.MaxRules }, 16777216},
		{"MAX_RULES_PER_UID=10", func(c *Config) any { return c.MaxRulesPerUID }, 10},
		{"MEMORY_LIMIT=32MiB", func(c *Config) any { return c.MemoryLimit }, int64(32 << 20)},
		{"MEMORY_LIMIT=1GiB", func(c *Config) any { return c.MemoryLimit }, int64(1 << 30)},
		{"MEMORY_LIMIT=1024GiB", func(c *Config) any { return c.MemoryLimit }, int64(1 << 40)},
		{"MEMORY_LIMIT=40000KiB", func(c *Config) any { return c.MemoryLimit }, int64(40000 << 10)},
		{"MEMORY_LIMIT=33554432B", func(c *Config) any { return c.MemoryLimit }, int64(32 << 20)},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			cfg, err := load(tt.env)
			if err != nil {
				t.Fatalf("Load(%s): %v", tt.env, err)
			}
			if got := tt.field(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Load(%s): got %#v, want %#v", tt.env, got, tt.want)
			}
		})
	}
}

func TestBadValues(t *testing.T) {
	tests := []struct {
		env                    string // one or more "K=V", separated by "|"
		varName, value, reason string // the fields of the *Error
	}{
		{"INTERFACES=", "INTERFACES", "", "required, but empty"},
		{"INTERFACES=eth0,", "INTERFACES", "eth0,", "item 2 of the list is empty"},
		{"INTERFACES=eth0,,eth1", "INTERFACES", "eth0,,eth1", "item 2 of the list is empty"},
		{"INTERFACES=abcdefghijklmnop", "INTERFACES", "abcdefghijklmnop", `interface name "abcdefghijklmnop" is longer than 15 bytes`},
		{"INTERFACES=eth0/1", "INTERFACES", "eth0/1", `interface name "eth0/1" contains '/'`},
		{"INTERFACES=eth0:1", "INTERFACES", "eth0:1", `interface name "eth0:1" contains ':'`},
		{"INTERFACES=et h0", "INTERFACES", "et h0", `interface name "et h0" contains ' '`},
		{"INTERFACES=eth\v0", "INTERFACES", "eth\v0", `interface name "eth\v0" contains '\v'`},
		{"INTERFACES=..", "INTERFACES", "..", `interface name must not be ".."`},
		{"INTERFACES=eth0,eth1,eth0", "INTERFACES", "eth0", "listed twice"},

		{"ALLOW_GID=-1", "ALLOW_GID", "-1", "not a group ID"},
		{"ALLOW_GID=4294967295", "ALLOW_GID", "4294967295", "not a group ID"},
		{"ALLOW_GID=wheel", "ALLOW_GID", "wheel", "not a group ID"},
		{"ALLOW_GID=+5", "ALLOW_GID", "+5", "not a group ID"},

		{"DEBUG_PORTS=eth0:TCP:99999", "DEBUG_PORTS", "eth0:TCP:99999", "port must be 1..65535"},
		{"DEBUG_PORTS=eth0:TCP:0", "DEBUG_PORTS", "eth0:TCP:0", "port must be 1..65535"},
		{"DEBUG_PORTS=eth0:TCP:ssh", "DEBUG_PORTS", "eth0:TCP:ssh", "port must be 1..65535"},
		{"DEBUG_PORTS=eth0:TCP:+22", "DEBUG_PORTS", "eth0:TCP:+22", "port must be 1..65535"},
		{"DEBUG_PORTS=eth0:TCP", "DEBUG_PORTS", "eth0:TCP", "TCP needs a port"},
		{"DEBUG_PORTS=eth0:SCTP:22", "DEBUG_PORTS", "eth0:SCTP:22", `protocol "SCTP" is not TCP, UDP or ICMP`},
		{"DEBUG_PORTS=eth0", "DEBUG_PORTS", "eth0", "want IF:TCP:PORT, IF:UDP:PORT or IF:ICMP"},
		{"DEBUG_PORTS=eth9:TCP:22", "DEBUG_PORTS", "eth9:TCP:22", `interface "eth9" is not in INTERFACES`},
		{"DEBUG_PORTS=:TCP:22", "DEBUG_PORTS", ":TCP:22", "empty interface name"},
		{"DEBUG_PORTS=eth0:TCP:22:", "DEBUG_PORTS", "eth0:TCP:22:", "empty remote IP after ':'"},
		{"DEBUG_PORTS=eth0:ICMP:", "DEBUG_PORTS", "eth0:ICMP:", "empty remote IP after ':'"},
		{"DEBUG_PORTS=eth0:TCP:22:198.18.0.256", "DEBUG_PORTS", "eth0:TCP:22:198.18.0.256", `remote "198.18.0.256" is not an IPv4 or IPv6 address`},
		{"DEBUG_PORTS=eth0:TCP:22:[198.18.0.1]", "DEBUG_PORTS", "eth0:TCP:22:[198.18.0.1]", "brackets are for IPv6 only"},
		{"DEBUG_PORTS=eth0:TCP:22:[2001:db8::1", "DEBUG_PORTS", "eth0:TCP:22:[2001:db8::1", `remote "[2001:db8::1" is not an IPv4 or IPv6 address`},
		{"DEBUG_PORTS=eth0:TCP:22:fe80::1%eth0", "DEBUG_PORTS", "eth0:TCP:22:fe80::1%eth0", "remote IP must not have a zone"},
		{"DEBUG_PORTS=eth0:TCP:22:0.0.0.0", "DEBUG_PORTS", "eth0:TCP:22:0.0.0.0", "remote IP must not be unspecified (0.0.0.0 or ::): leave it out to allow any remote"},
		{"DEBUG_PORTS=eth0:ICMP:22", "DEBUG_PORTS", "eth0:ICMP:22", `remote "22" is not an IPv4 or IPv6 address`},
		{"DEBUG_PORTS=eth0:TCP:22,eth0:tcp:22", "DEBUG_PORTS", "eth0:tcp:22", "listed twice"},
		{"DEBUG_PORTS=eth0:TCP:22:[2001:db8::1],eth0:TCP:22:2001:db8:0::1", "DEBUG_PORTS", "eth0:TCP:22:2001:db8:0::1", "listed twice"},

		{"STATIC_PIPES=eth0:UDP:70000", "STATIC_PIPES", "eth0:UDP:70000", "port must be 1..65535"},
		{"PIPE_DIR=run/pipes", "PIPE_DIR", "run/pipes", "not an absolute path"},
		{"STATIC_PIPES=eth0:UDP:53|PIPE_DIR=/" + strings.Repeat("d", 100), "PIPE_DIR", "/" + strings.Repeat("d", 100),
			"the socket path /" + strings.Repeat("d", 100) + "/eth0-udp-53 of STATIC_PIPES item eth0:UDP:53 is longer than 107 bytes"},
		{"DEBUG_PORTS=eth0:TCP:22|STATIC_PIPES=eth1:UDP:53,eth0:TCP:22", "STATIC_PIPES", "eth0:TCP:22", "also in DEBUG_PORTS: a rule has one owner"},

		{"ADD_MACS=02:00:00:00:00", "ADD_MACS", "02:00:00:00:00", "not a MAC address"},
		{"ADD_MACS=02:00:00:00:00:0g", "ADD_MACS", "02:00:00:00:00:0g", "not a MAC address"},
		{"ADD_MACS=ff:ff:ff:ff:ff:ff", "ADD_MACS", "ff:ff:ff:ff:ff:ff", "not a unicast MAC address"},
		{"ADD_MACS=01:00:5e:00:00:01", "ADD_MACS", "01:00:5e:00:00:01", "not a unicast MAC address"},
		{"ADD_MACS=00:00:00:00:00:00", "ADD_MACS", "00:00:00:00:00:00", "not a unicast MAC address"},
		{"ADD_MACS=02:00:00:00:00:01,02-00-00-00-00-01", "ADD_MACS", "02-00-00-00-00-01", "listed twice"},
		{"ENDPOINT_ADDRS=198.18.0.9", "ENDPOINT_ADDRS", "198.18.0.9", "not IF:ADDR"},
		{"ENDPOINT_ADDRS=eth0:", "ENDPOINT_ADDRS", "eth0:", "empty address after ':'"},
		{"ENDPOINT_ADDRS=eth0:198.18.0.256", "ENDPOINT_ADDRS", "eth0:198.18.0.256", "not an IPv4 or IPv6 address after ':'"},
		{"ENDPOINT_ADDRS=eth0:[198.18.0.9]", "ENDPOINT_ADDRS", "eth0:[198.18.0.9]", "brackets are for IPv6 only"},
		{"ENDPOINT_ADDRS=eth0:fe80::9%eth0", "ENDPOINT_ADDRS", "eth0:fe80::9%eth0", "address must not have a zone"},
		{"ENDPOINT_ADDRS=eth0:0.0.0.0", "ENDPOINT_ADDRS", "eth0:0.0.0.0", "not a unicast address"},
		{"ENDPOINT_ADDRS=eth0:127.0.0.1", "ENDPOINT_ADDRS", "eth0:127.0.0.1", "not a unicast address"},
		{"ENDPOINT_ADDRS=eth0:ff02::1", "ENDPOINT_ADDRS", "eth0:ff02::1", "not a unicast address"},
		{"ENDPOINT_ADDRS=eth2:198.18.0.9", "ENDPOINT_ADDRS", "eth2:198.18.0.9", `interface "eth2" is not in INTERFACES`},
		{"ENDPOINT_ADDRS=eth0:198.18.0.9,eth0:::ffff:198.18.0.9", "ENDPOINT_ADDRS", "eth0:::ffff:198.18.0.9", "listed twice"},

		{"NO_HOST_RINGS=on", "NO_HOST_RINGS", "on", "not a boolean"},
		{"NO_ZERO_COPY=2", "NO_ZERO_COPY", "2", "not a boolean"},

		{"PCAP_LOG=/var/log/", "PCAP_LOG", "/var/log/", "names a directory, not a file"},

		{"RUST_LOG=verbose", "RUST_LOG", "verbose", "unknown log level"},
		{"RUST_LOG=usnetd=debug", "RUST_LOG", "usnetd=debug", "unknown log level"},
		{"LOG_LEVEL=warning", "LOG_LEVEL", "warning", "unknown log level"},
		{"LOG_LEVEL=off|RUST_LOG=info", "LOG_LEVEL", "off", "unknown log level"},

		{"LOG_FORMAT=text", "LOG_FORMAT", "text", "unknown log format"},

		{"BACKEND=netmap", "BACKEND", "netmap", "unknown backend"},
		{"BACKEND=afpac\u212aet", "BACKEND", "afpac\u212aet", "unknown backend"},

		{"WORKERS=257", "WORKERS", "257", "out of range 0..256"},
		{"WORKERS=99999999999999999999999", "WORKERS", "99999999999999999999999", "out of range 0..256"},
		{"WORKERS=-1", "WORKERS", "-1", "not a decimal number"},
		{"WORKERS=0x10", "WORKERS", "0x10", "not a decimal number"},
		{"WORKERS= 4", "WORKERS", " 4", "not a decimal number"},

		{"CPUS=1024", "CPUS", "1024", "not a CPU number 0..1023 or a range N-M of them"},
		{"CPUS=3-1", "CPUS", "3-1", "range runs backwards"},
		{"CPUS=0-3,2", "CPUS", "2", "CPU 2 listed twice"},
		{"CPUS=0-", "CPUS", "0-", "not a CPU number 0..1023 or a range N-M of them"},
		{"CPUS=1-2-3", "CPUS", "1-2-3", "not a CPU number 0..1023 or a range N-M of them"},
		{"CPUS=a", "CPUS", "a", "not a CPU number 0..1023 or a range N-M of them"},
		{"CPUS=1,,2", "CPUS", "1,,2", "item 2 of the list is empty"},

		{"RING_SIZE=32", "RING_SIZE", "32", "out of range 64..65536"},
		{"RING_SIZE=131072", "RING_SIZE", "131072", "out of range 64..65536"},
		{"RING_SIZE=1000", "RING_SIZE", "1000", "not a power of two"},

		{"BATCH_SIZE=0", "BATCH_SIZE", "0", "out of range 1..256"},
		{"BATCH_SIZE=257", "BATCH_SIZE", "257", "out of range 1..256"},
		{"RING_SIZE=64|BATCH_SIZE=128", "BATCH_SIZE", "128", "larger than RING_SIZE (64)"},

		{"SOCKET_PATH=usnetd.socket", "SOCKET_PATH", "usnetd.socket", "not an absolute path"},
		{"SOCKET_PATH=@", "SOCKET_PATH", "@", "empty abstract socket name"},
		{"SOCKET_PATH=/run/", "SOCKET_PATH", "/run/", "names a directory, not a socket"},
		{"SOCKET_PATH=/" + strings.Repeat("a", 107), "SOCKET_PATH", "/" + strings.Repeat("a", 107), "longer than 107 bytes"},

		{"METRICS_ADDR=9464", "METRICS_ADDR", "9464", "not HOST:PORT"},
		{"METRICS_ADDR=::1:9464", "METRICS_ADDR", "::1:9464", "not HOST:PORT"},
		{"METRICS_ADDR=127.0.0.1:0", "METRICS_ADDR", "127.0.0.1:0", "port must be 1..65535"},
		{"METRICS_ADDR=127.0.0.1:65536", "METRICS_ADDR", "127.0.0.1:65536", "port must be 1..65535"},
		{"METRICS_ADDR=127.0.0.1:http", "METRICS_ADDR", "127.0.0.1:http", "port must be 1..65535"},
		{"METRICS_ADDR=bad_host:9464", "METRICS_ADDR", "bad_host:9464", `host "bad_host" is neither an IP address nor a host name`},
		{"METRICS_ADDR=-x.example:9464", "METRICS_ADDR", "-x.example:9464", `host "-x.example" is neither an IP address nor a host name`},

		{"MAX_RULES_PER_CLIENT=0", "MAX_RULES_PER_CLIENT", "0", "out of range 1..1048576"},
		{"MAX_CHANNELS_PER_CLIENT=1025", "MAX_CHANNELS_PER_CLIENT", "1025", "out of range 1..1024"},
		{"MAX_CHANNELS_PER_CLIENT=x", "MAX_CHANNELS_PER_CLIENT", "x", "not a decimal number"},
		{"MAX_CLIENTS=0", "MAX_CLIENTS", "0", "out of range 1..65536"},
		{"MAX_CHANNELS_PER_UID=65537", "MAX_CHANNELS_PER_UID", "65537", "out of range 1..65536"},
		{"MAX_RULES_PER_UID=-1", "MAX_RULES_PER_UID", "-1", "not a decimal number"},
		{"MEMORY_LIMIT=256", "MEMORY_LIMIT", "256", "needs a unit: B, KiB, MiB or GiB"},
		{"MEMORY_LIMIT=256MB", "MEMORY_LIMIT", "256MB", "needs a unit: B, KiB, MiB or GiB"},
		{"MEMORY_LIMIT=31MiB", "MEMORY_LIMIT", "31MiB", "out of range 32MiB..1024GiB"},
		{"MEMORY_LIMIT=1025GiB", "MEMORY_LIMIT", "1025GiB", "out of range 32MiB..1024GiB"},
		{"MEMORY_LIMIT=1.5GiB", "MEMORY_LIMIT", "1.5GiB", "not a whole number with a unit"},
		{"MEMORY_LIMIT=GiB", "MEMORY_LIMIT", "GiB", "not a whole number with a unit"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			cfg, err := load(strings.Split(tt.env, "|")...)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Load(%q) = %v, %v; want an *Error", tt.env, cfg, err)
			}
			if cfg != nil {
				t.Errorf("Load returned a Config with its error")
			}
			if e.Var != tt.varName || e.Value != tt.value || e.Reason != tt.reason {
				t.Errorf("Load(%q):\n got %s=%q: %s\nwant %s=%q: %s", tt.env, e.Var, e.Value, e.Reason, tt.varName, tt.value, tt.reason)
			}
			if want := lookupVar(tt.varName).Allowed; e.Allowed != want {
				t.Errorf("Allowed = %q, want the table's %q", e.Allowed, want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error has more than one line: %q", err)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct{ env, want string }{
		{"DEBUG_PORTS=eth0:TCP:99999",
			`DEBUG_PORTS="eth0:TCP:99999": port must be 1..65535 (allowed: comma-separated IF:TCP:PORT, IF:UDP:PORT or IF:ICMP, ` +
				`each optionally :REMOTEIP (IPv4, or IPv6 bare or in [brackets]); IF one of INTERFACES, PORT 1..65535, protocol in any case)`},
		{"WORKERS=300", `WORKERS="300": out of range 0..256 (allowed: 0..256)`},
		{"BACKEND=netmap", `BACKEND="netmap": unknown backend (allowed: auto, afxdp, afpacket, macvtap)`},
		{"INTERFACES=eth\n0", `INTERFACES="eth\n0": interface name "eth\n0" contains '\n' (allowed: comma-separated Linux interface names ` +
			`(1..15 bytes, no '/', ':' or whitespace), no duplicates)`},
	}
	for _, tt := range tests {
		_, err := load(tt.env)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Load(%q) error\n got: %v\nwant: %s", tt.env, err, tt.want)
		}
	}
	if _, err := Load([]string{"PATH=/bin"}, ""); err == nil ||
		!strings.HasPrefix(err.Error(), `INTERFACES="": required, but not set (allowed: `) {
		t.Errorf("without INTERFACES: error = %v", err)
	}
}

func TestLogLevelPrecedence(t *testing.T) {
	tests := []struct {
		env  []string
		want zerolog.Level
	}{
		{nil, zerolog.InfoLevel},
		{[]string{"RUST_LOG=debug"}, zerolog.DebugLevel},
		{[]string{"RUST_LOG=debug", "LOG_LEVEL=error"}, zerolog.ErrorLevel},
		{[]string{"LOG_LEVEL=trace", "RUST_LOG=warn"}, zerolog.TraceLevel},
		// RUST_LOG of other programs does not stop usnetd once LOG_LEVEL is set.
		{[]string{"RUST_LOG=hyper=warn,info", "LOG_LEVEL=debug"}, zerolog.DebugLevel},
		// An empty LOG_LEVEL is the default: RUST_LOG counts.
		{[]string{"RUST_LOG=warn", "LOG_LEVEL="}, zerolog.WarnLevel},
	}
	for _, tt := range tests {
		cfg, err := load(tt.env...)
		if err != nil {
			t.Errorf("Load(%q): %v", tt.env, err)
			continue
		}
		if cfg.LogLevel != tt.want {
			t.Errorf("Load(%q): level %v, want %v", tt.env, cfg.LogLevel, tt.want)
		}
	}
}

func TestLogFormatDefault(t *testing.T) {
	for _, tty := range []bool{false, true} {
		cfg, err := (&Loader{IsTerminal: func() bool { return tty }}).Load([]string{"INTERFACES=eth0"}, "")
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]LogFormat{false: LogJSON, true: LogConsole}[tty]
		if cfg.LogFormat != want {
			t.Errorf("terminal %v: LogFormat %q, want %q", tty, cfg.LogFormat, want)
		}
		cfg, err = (&Loader{IsTerminal: func() bool { return tty }}).Load([]string{"INTERFACES=eth0", "LOG_FORMAT=json"}, "")
		if err != nil || cfg.LogFormat != LogJSON {
			t.Errorf("terminal %v, LOG_FORMAT=json: %v, %v", tty, cfg, err)
		}
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "notatty")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) || IsTerminal(&strings.Builder{}) || IsTerminal((*os.File)(nil)) {
		t.Error("IsTerminal is true for a file, a builder or a nil file")
	}
}

// writeFile writes a CONFFILE into a temporary directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "usnetd.conf")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFileAndPrecedence(t *testing.T) {
	path := writeFile(t, `# usnetd
INTERFACES=eth0,eth1
export DEBUG_PORTS="eth0:TCP:22"
WORKERS=2
METRICS_ADDR=127.0.0.1:9100
RUST_BACKTRACE=1
`)
	env := []string{"WORKERS=4", "METRICS_ADDR=", "HOME=/root", "NOEQUALS", "WORKERS=8"}
	cfg, err := Load(env, path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Interfaces, []string{"eth0", "eth1"}) {
		t.Errorf("Interfaces from the file = %q", cfg.Interfaces)
	}
	if len(cfg.DebugPorts) != 1 || cfg.DebugPorts[0].String() != "eth0:TCP:22" {
		t.Errorf("DebugPorts from the file = %v", cfg.DebugPorts)
	}
	if cfg.Workers != 4 {
		t.Errorf("Workers = %d, want 4: the environment wins, its first WORKERS counts as for os.Getenv", cfg.Workers)
	}
	if cfg.MetricsAddr != "" {
		t.Errorf("MetricsAddr = %q: an empty METRICS_ADDR in the environment must hide the file's and disable metrics", cfg.MetricsAddr)
	}
}

func TestFileErrors(t *testing.T) {
	path := writeFile(t, "INTERFACES=eth0\n\nWORKERS=300\n")
	_, err := Load(nil, path)
	var e *Error
	if !errors.As(err, &e) || e.Source != path+":3" {
		t.Fatalf("error = %v, want an *Error from %s:3", err, path)
	}
	if want := path + `:3: WORKERS="300": out of range 0..256 (allowed: 0..256)`; err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
	// The same value in the environment has no source.
	if _, err := Load([]string{"WORKERS=300"}, path); err == nil || strings.HasPrefix(err.Error(), path) {
		t.Errorf("environment value: error = %v, want one without the file name", err)
	}

	tests := []struct{ content, want string }{
		{"INTERFACES=eth0\nINTERFACE=eth1\n", "%s:2: unknown variable INTERFACE, did you mean INTERFACES?"},
		{"interfaces=eth0\n", "%s:1: unknown variable interfaces, did you mean INTERFACES?"},
		{"INTERFACES=eth0\nDEBUG_PORT=eth0:TCP:22\nWOKRERS=2\n", "%s:2: unknown variable DEBUG_PORT, did you mean DEBUG_PORTS?"},
		{"INTERFACES=eth0\nCPU=1\n", "%s:2: unknown variable CPU, did you mean CPUS?"},
		{"INTERFACES=eth0\nexport X=$(id)\n", "%s:2: X: '$' in an unquoted value: quote the whole value ('...' takes everything literally)"},
	}
	for _, tt := range tests {
		path := writeFile(t, tt.content)
		_, err := Load(nil, path)
		if want := strings.Replace(tt.want, "%s", path, 1); err == nil || err.Error() != want {
			t.Errorf("file %q: error\n got: %v\nwant: %s", tt.content, err, want)
		}
	}
}

func TestMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.conf")
	_, err := Load([]string{"INTERFACES=eth0"}, path)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("error = %v, want ErrNotExist naming %s", err, path)
	}
}

func TestPortSpecString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"eth0:TCP:22", "eth0:TCP:22"},
		{"eth0:udp:053", "eth0:UDP:53"},
		{"eth0:Icmp", "eth0:ICMP"},
		{"eth0:ICMP:198.18.0.1", "eth0:ICMP:198.18.0.1"},
		{"eth0:TCP:22:2001:DB8:0::1", "eth0:TCP:22:[2001:db8::1]"},
		{"eth0:TCP:22:[2001:db8::1]", "eth0:TCP:22:[2001:db8::1]"},
		{"eth0:ICMP:[::ffff:198.18.0.1]", "eth0:ICMP:198.18.0.1"},
	}
	for _, tt := range tests {
		p, reason := parsePortSpec(tt.in)
		if reason != "" {
			t.Errorf("parsePortSpec(%q): %s", tt.in, reason)
			continue
		}
		if got := p.String(); got != tt.want {
			t.Errorf("parsePortSpec(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := (PortSpec{Interface: "x", Proto: 132, Port: 9}).String(); got != "x:PROTO132:9" {
		t.Errorf("unknown protocol: %q", got)
	}
}

// FuzzPortSpec checks that parsePortSpec never panics and that String
// gives back what parses to the same PortSpec.
func FuzzPortSpec(f *testing.F) {
	f.Add("eth0:TCP:22")                  // plain
	f.Add("eth0:icmp:2001:db8::1")        // ICMP with a bare IPv6 remote
	f.Add("eth0:UDP:53:[::ffff:1.2.3.4]") // IPv4-mapped in brackets
	f.Add("eth0:TCP:99999:x")             // port out of range
	f.Add(":::::")                        // nothing but colons
	f.Fuzz(func(t *testing.T, s string) {
		p, reason := parsePortSpec(s)
		if reason != "" {
			return
		}
		q, reason := parsePortSpec(p.String())
		if reason != "" || q != p {
			t.Fatalf("%q parsed to %#v, printed as %q, parsed again to %#v (%s)", s, p, p.String(), q, reason)
		}
	})
}

// FuzzLoad checks that Load never panics and that an error is one line,
// whatever the value of whichever variable.
func FuzzLoad(f *testing.F) {
	for i := range variables {
		f.Add(i, variables[i].Default)
	}
	f.Add(2, "eth0:TCP:22:[")
	f.Add(13, "0-1023")
	f.Fuzz(func(t *testing.T, i int, value string) {
		if i < 0 || i >= len(variables) {
			return
		}
		_, err := load(variables[i].Name + "=" + value)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error with a newline: %q", err)
		}
	})
}
