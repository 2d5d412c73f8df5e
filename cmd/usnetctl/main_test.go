package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/usnetd/usnetd/control"
	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/control/wire"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/internal/sockdiag"
	"github.com/usnetd/usnetd/internal/testkit"
	l4 "github.com/usnetd/usnetd/switch"
)

const runEnv = "USNETCTL_TEST_ARGS"

func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv(runEnv); ok {
		os.Exit(run(strings.Fields(args), os.Environ(), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func u16(v uint16) *uint16 { return &v }

// startServer runs a control server over an in-memory NIC with a kernel
// DEBUG_PORTS rule and one endpoint (a client of this test) holding a rule.
func startServer(t *testing.T, dir string) string {
	t.Helper()
	netlab.Require(t)
	path := filepath.Join(dir, "usnetd.socket")
	d := testkit.NewDomain(t, testkit.DomainOptions{KernelPorts: []uint16{22}})
	srv, err := control.NewServer(control.ServerConfig{
		SocketPath:  path,
		Interfaces:  []control.Interface{{Name: "eth0", Pipeline: d.Pipeline, Backend: "memory", Addrs: []netip.Addr{testkit.NICAddr}}},
		KernelPorts: func() ([]sockdiag.Socket, error) { return nil, nil },
		Log:         zerolog.Nop(),
		Version:     "1.2.3",
	})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Serve(t, srv.Serve)

	c, err := client.Dial(client.Options{SocketPath: path, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.RequestUDS("eth0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	m := wire.Match{DstAddr: l4.MustParseAddr("198.18.0.1").Netip(), DstPort: u16(8080), Protocol: 6}
	if err := c.AddMatch(m); err != nil {
		t.Fatal(err)
	}
	// The endpoint sends one frame from a MAC that is not local: refused.
	f := testkit.IPv4Frame(testkit.RemoteMAC, testkit.NICMAC, testkit.AddrPort("198.18.0.1", 0), testkit.AddrPort("198.18.1.2", 0), l4.ProtoUDP, 60)
	if _, err := ch.Write(f); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); srv.Status().Endpoints[0].Refused != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the endpoint's frame from a foreign MAC was not refused")
		}
	}
	return path
}

func runCtl(env []string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, env, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	path := startServer(t, dir)
	env := []string{"SOCKET_PATH=" + path}

	code, out, errs := runCtl(env, "status")
	t.Logf("usnetctl status:\n%s", out)
	if code != 0 || !strings.Contains(out, "usnetd 1.2.3 at "+path) || !strings.Contains(out, "eth0       memory") ||
		!strings.Contains(out, fmt.Sprintf("1         %d", os.Getpid())) || !strings.Contains(out, "REFUSED") ||
		!strings.Contains(out, "  endpoint 1: src_mac 1\n") || !strings.Contains(out, "  1 uds  ") {
		t.Errorf("status: %d\n%s%s", code, out, errs)
	}
	code, out, errs = runCtl(env, "ports")
	want := "PROTO  ADDRESS     PORT  STATE\ntcp    198.18.0.1  22    listening\ntcp    198.18.0.1  8080  listening\n"
	if code != 0 || out != want {
		t.Errorf("ports: %d\n%s%s\nwant\n%s", code, out, errs, want)
	}
	code, out, _ = runCtl(env, "rules")
	t.Logf("usnetctl rules:\n%s", out)
	if code != 0 || !strings.Contains(out, "tcp    198.18.0.1:22    *       kernel eth0-kernel  registered  yes") ||
		!strings.Contains(out, "tcp    198.18.0.1:8080  *       endpoint 1          registered  no") {
		t.Errorf("rules: %d\n%s", code, out)
	}

	// --json, before or after the command; --socket beats SOCKET_PATH.
	code, out, errs = runCtl([]string{"SOCKET_PATH=/nonexistent"}, "status", "--json", "--socket", path)
	var st statusJSON
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Version != "1.2.3" || len(st.Endpoints) != 1 ||
		st.Endpoints[0].Rules[0].DstAddr != "198.18.0.1" || *st.Endpoints[0].Rules[0].DstPort != 8080 ||
		st.Endpoints[0].Refused != 1 || st.Endpoints[0].RefusedBy["src_mac"] != 1 || len(st.Endpoints[0].Kinds) != 1 || st.Endpoints[0].Kinds[0] != "uds" {
		t.Errorf("status --json: %d %+v\n%s%s", code, st, out, errs)
	}
	code, out, _ = runCtl(env, "--json", "ports")
	var ports portsJSON
	if code != 0 || json.Unmarshal([]byte(out), &ports) != nil || len(ports.Listening) != 2 || ports.Connected == nil {
		t.Errorf("ports --json: %d\n%s", code, out)
	}
	code, out, _ = runCtl(env, "--json", "rules")
	var rules []ruleJSON
	if code != 0 || json.Unmarshal([]byte(out), &rules) != nil || len(rules) != 2 || rules[0].Owner != "kernel eth0-kernel" {
		t.Errorf("rules --json: %d\n%s", code, out)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		env  []string
		args []string
		code int
		msg  string
	}{
		{nil, nil, 2, "want one command"},
		{nil, []string{"status", "ports"}, 2, "want one command"},
		{nil, []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{nil, []string{"--bogus", "status"}, 2, "flag provided but not defined"},
		{nil, []string{"--timeout", "0s", "status"}, 2, "--timeout"},
		{[]string{"SOCKET_PATH=" + filepath.Join(dir, "none")}, []string{"status"}, 1, "usnetd is not running: no socket at " + filepath.Join(dir, "none")},
		{[]string{"SOCKET_PATH=@usnetctl-test-none"}, []string{"ports"}, 1, "usnetd is not running"},
	} {
		code, _, errs := runCtl(c.env, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%v %v: exit %d, %q; want %d and %q", c.env, c.args, code, errs, c.code, c.msg)
		}
	}
	if code, out, _ := runCtl(nil, "-h"); code != 0 || !strings.Contains(out, "usage: usnetctl") {
		t.Errorf("-h: %d %q", code, out)
	}
}

// TestAccessDenied runs usnetctl as nobody against a socket of mode 0770.
func TestAccessDenied(t *testing.T) {
	dir, err := os.MkdirTemp("", "usnetctl-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := startServer(t, dir)
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	copyBin := filepath.Join(dir, "usnetctl.test")
	if err := os.WriteFile(copyBin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(copyBin, "-test.run=^$")
	cmd.Env = append(os.Environ(), runEnv+"=status", "SOCKET_PATH="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errb.String(), "access to the usnetd control socket denied") {
		t.Errorf("as nobody: %v, stderr %q", err, errb.String())
	}
}
