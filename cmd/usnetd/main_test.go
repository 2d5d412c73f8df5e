package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/usnetd/usnetd/internal/config"
)

// started records what the fake daemon was given.
var started []*config.Config

func fakeStart(cfg *config.Config, log zerolog.Logger) error {
	started = append(started, cfg)
	if cfg.PCAPLog == "/fail" {
		return errors.New("claiming eth0: something broke")
	}
	return nil
}

func runWith(args, env []string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, env, &o, &e, fakeStart)
	return code, o.String(), e.String()
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		code, out, errOut := runWith([]string{arg}, nil)
		if code != 0 || !strings.HasPrefix(out, "Usage: usnetd [-h|--help] [CONFFILE]") || errOut != "" {
			t.Errorf("usnetd %s: exit %d, stdout %.60q, stderr %q", arg, code, out, errOut)
		}
		if !strings.Contains(out, "MAX_CHANNELS_PER_CLIENT") {
			t.Errorf("usnetd %s: usage lacks the variables", arg)
		}
	}
	// -h wins over a bad configuration and extra arguments.
	if code, _, _ := runWith([]string{"a", "-h"}, []string{"WORKERS=x"}); code != 0 {
		t.Errorf("usnetd a -h: exit %d, want 0", code)
	}
}

// oneLine checks that s is exactly one line starting with "usnetd: ".
func oneLine(t *testing.T, what, s string) {
	t.Helper()
	if !strings.HasPrefix(s, "usnetd: ") || strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		t.Errorf("%s: stderr = %q, want one line starting with \"usnetd: \"", what, s)
	}
}

func TestErrors(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "usnetd.conf")
	if err := os.WriteFile(conf, []byte("INTERFACES=eth0\nWORKERS=999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.conf")
	tests := []struct {
		name string
		args []string
		env  []string
		want string // the whole stderr
	}{
		{"no INTERFACES", nil, []string{"HOME=/root"},
			"usnetd: INTERFACES=\"\": required, but not set (allowed: comma-separated Linux interface names (1..15 bytes, no '/', ':' or whitespace), no duplicates)\n"},
		{"bad value", nil, []string{"INTERFACES=eth0", "DEBUG_PORTS=eth0:TCP:99999"},
			"usnetd: DEBUG_PORTS=\"eth0:TCP:99999\": port must be 1..65535 (allowed: comma-separated IF:TCP:PORT, IF:UDP:PORT or IF:ICMP, " +
				"each optionally :REMOTEIP (IPv4, or IPv6 bare or in [brackets]); IF one of INTERFACES, PORT 1..65535, protocol in any case)\n"},
		{"bad value in the file", []string{conf}, nil,
			"usnetd: " + conf + ":2: WORKERS=\"999\": out of range 0..256 (allowed: 0..256)\n"},
		{"missing CONFFILE", []string{missing}, []string{"INTERFACES=eth0"},
			"usnetd: config file: open " + missing + ": no such file or directory\n"},
		{"two arguments", []string{"a.conf", "b.conf"}, []string{"INTERFACES=eth0"},
			"usnetd: at most one CONFFILE, got 2 arguments (usage: usnetd [-h|--help] [CONFFILE])\n"},
		{"unknown flag", []string{"-v"}, []string{"INTERFACES=eth0"},
			"usnetd: unknown flag \"-v\" (usage: usnetd [-h|--help] [CONFFILE])\n"},
	}
	for _, tt := range tests {
		code, out, errOut := runWith(tt.args, tt.env)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2", tt.name, code)
		}
		if out != "" {
			t.Errorf("%s: stdout %q, want nothing", tt.name, out)
		}
		oneLine(t, tt.name, errOut)
		if errOut != tt.want {
			t.Errorf("%s: stderr\n got: %q\nwant: %q", tt.name, errOut, tt.want)
		}
	}
}

func TestSuccess(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "usnetd.conf")
	if err := os.WriteFile(conf, []byte("INTERFACES=eth0,eth1\nBACKEND=afpacket\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// "--" ends the flags: a CONFFILE may start with '-'.
	started = nil
	code, out, errOut := runWith([]string{"--", conf}, []string{"WORKERS=2", "METRICS_ADDR=", "SOCKET_PATH=@usnetd-test"})
	if len(started) != 1 || started[0].Workers != 2 || strings.Join(started[0].Interfaces, ",") != "eth0,eth1" {
		t.Fatalf("daemon started with %+v", started)
	}
	if code != 0 || out != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("stderr has %d lines, want 2: %q", len(lines), errOut)
	}
	var rec struct {
		Level, Message, Backend, Workers, Socket, Metrics string
		Interfaces                                        []string
	}
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("first line is not JSON (stderr is no terminal): %q: %v", lines[0], err)
	}
	if rec.Level != "info" || rec.Backend != "afpacket" || rec.Workers != "2" || rec.Socket != "@usnetd-test" ||
		rec.Metrics != "off" || strings.Join(rec.Interfaces, ",") != "eth0,eth1" {
		t.Errorf("summary = %+v", rec)
	}
	if !strings.Contains(lines[1], "usnetd stopped") {
		t.Errorf("second line = %q", lines[1])
	}

	// LOG_LEVEL=error hides both info lines; LOG_FORMAT=console gives text.
	code, _, errOut = runWith(nil, []string{"INTERFACES=eth0", "LOG_LEVEL=error"})
	if code != 0 || errOut != "" {
		t.Errorf("LOG_LEVEL=error: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runWith(nil, []string{"INTERFACES=eth0", "LOG_FORMAT=console"})
	if code != 0 || !strings.Contains(errOut, "INF configuration loaded") || !strings.Contains(errOut, "workers=\"one per NIC queue\"") {
		t.Errorf("LOG_FORMAT=console: exit %d, stderr %q", code, errOut)
	}
}

func TestDaemonFailure(t *testing.T) {
	code, _, errOut := runWith(nil, []string{"INTERFACES=eth0", "PCAP_LOG=/fail", "LOG_LEVEL=error", "LOG_FORMAT=json"})
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"level":"error"`) || lines[1] != "usnetd: claiming eth0: something broke" {
		t.Fatalf("stderr = %q", errOut)
	}
}
