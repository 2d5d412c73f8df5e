package deploy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usnetd/usnetd/internal/netlab"
)

// The example unit of a usnet program, deploy/usnet-hello.service, and its
// program cmd/usnet-hello.

const (
	helloUnit  = "usnet-hello.service"
	helloExec  = "ExecStart=/usr/local/bin/usnet-hello\n"
	helloGroup = "SupplementaryGroups=usnet\n"
	helloPort  = "8080" // the program's default
)

// TestHelloUnitVerifies runs `systemd-analyze verify` on the example unit,
// next to usnetd's (which it is ordered after), with ExecStart pointing at
// a stand-in as TestUnitVerifies does; any line about the unit fails the
// test, and a planted unknown setting must be reported.
func TestHelloUnitVerifies(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	for _, name := range []string{"usnetd", "usnet-hello"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	usnetd := strings.Replace(readFile(t, "usnetd.service"), "ExecStart=/usr/local/bin/usnetd\n", "ExecStart="+filepath.Join(dir, "usnetd")+"\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "usnetd.service"), []byte(usnetd), 0o644); err != nil {
		t.Fatal(err)
	}
	unit := readFile(t, helloUnit)
	if strings.Count(unit, helloExec) != 1 {
		t.Fatalf("%s must have exactly one %q", helloUnit, helloExec)
	}
	unit = strings.Replace(unit, helloExec, "ExecStart="+filepath.Join(dir, "usnet-hello")+"\n", 1)
	verify := func(text string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, helloUnit), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, helloUnit)).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze verify: %v", err)
		}
		return string(out)
	}
	out := verify(unit)
	t.Logf("systemd-analyze verify:\n%s", out)
	for line := range strings.Lines(out) {
		if strings.Contains(line, dir) || strings.Contains(line, "usnet") {
			t.Errorf("verify complains: %s", strings.TrimSpace(line))
		}
	}
	bad := strings.Replace(unit, "NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nNoSuchSetting=1\n", 1)
	if out := verify(bad); !strings.Contains(out, "NoSuchSetting") {
		t.Errorf("verify did not report a planted unknown setting; output:\n%s", out)
	}
}

// TestHelloUnitSettings pins down what README.md ("Running a usnet program
// under systemd") says of the example unit.
func TestHelloUnitSettings(t *testing.T) {
	s := unitSettings(t, readFile(t, helloUnit))
	for k, want := range map[string]string{
		"After":                 "usnetd.service",
		"Wants":                 "usnetd.service",
		"Type":                  "notify",
		"DynamicUser":           "yes",
		"SupplementaryGroups":   "usnet",
		"RuntimeDirectory":      "usnet-hello",
		"Environment":           "XDG_RUNTIME_DIR=%t/usnet-hello",
		"CapabilityBoundingSet": "",
		"Restart":               "on-failure",
	} {
		if got := s[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want [%q]", k, got, want)
		}
	}
	for _, k := range []string{"Requires", "BindsTo", "PartOf", "PrivateNetwork"} {
		if v, ok := s[k]; ok {
			t.Errorf("%s=%q is set; the unit explains why it must not be", k, v)
		}
	}
}

// installHello puts the example into the container's root: the program
// built at PREFIX/bin, the unit with ExecStart there and the group of
// ALLOW_GID (numeric), and /etc/usnet-hello.conf naming the NIC.
func installHello(ctx context.Context, t *testing.T, root, prefix, iface string, gid int) {
	t.Helper()
	bin := filepath.Join(root, prefix, "bin", "usnet-hello")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/usnet-hello")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/usnet-hello: %v\n%s", err, out)
	}
	unit := readFile(t, helloUnit)
	if strings.Count(unit, helloExec) != 1 || strings.Count(unit, helloGroup) != 1 {
		t.Fatalf("%s must have exactly one %q and one %q", helloUnit, helloExec, helloGroup)
	}
	unit = strings.Replace(unit, helloExec, "ExecStart="+prefix+"/bin/usnet-hello\n", 1)
	unit = strings.Replace(unit, helloGroup, "SupplementaryGroups="+strconv.Itoa(gid)+"\n", 1)
	if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", helloUnit), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/usnet-hello.conf"), []byte("USNET_INTERFACE="+iface+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// helloGet asks the example's server at addr from ns, retrying for up to
// wait (a stack that attaches again after a restart of usnetd takes a
// moment); it returns the body.
func helloGet(ns *netlab.NS, addr string, wait time.Duration) (string, error) {
	cl := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return ns.Dial(ctx, network, a)
		}, DisableKeepAlives: true},
		Timeout: 2 * time.Second,
	}
	var err error
	for deadline := time.Now().Add(wait); ; time.Sleep(200 * time.Millisecond) {
		var resp *http.Response
		if resp, err = cl.Get("http://" + addr + "/"); err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			err = fmt.Errorf("status %s, %v", resp.Status, rerr)
		}
		if time.Now().After(deadline) {
			return "", err
		}
	}
}

// checkHello starts the example unit in the container and checks that it
// serves the peer through usnetd, as a dynamic user that is not root, with
// its control client's socket in its RuntimeDirectory.
func checkHello(ctx context.Context, t *testing.T, c *container, peer *netlab.NS, addr string) {
	t.Helper()
	// A veth hands the peer kernel's frames on with CHECKSUM_PARTIAL
	// (their TCP checksums are not filled in), which a userspace stack
	// rightly drops; a real NIC delivers complete checksums.
	if err := peer.TxChecksumOff("eth0"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.run(ctx, "systemctl", "start", helloUnit); err != nil {
		j, _ := c.run(ctx, "journalctl", "--no-pager", "-o", "cat", "-n", "40", "-u", helloUnit)
		t.Fatalf("systemctl start %s: %v\n%s\njournal:\n%s", helloUnit, err, out, j)
	}
	body, err := helloGet(peer, addr, 10*time.Second)
	if err != nil || !strings.Contains(body, "hello from usnet-hello") {
		j, _ := c.run(ctx, "journalctl", "--no-pager", "-o", "cat", "-n", "40", "-u", helloUnit)
		st, _ := c.run(ctx, "/opt/usnetd/bin/usnetctl", "status")
		rules, _ := c.run(ctx, "/opt/usnetd/bin/usnetctl", "rules")
		t.Fatalf("GET http://%s/ from the peer: %q, %v\njournal:\n%s\nusnetctl status:\n%s\nusnetctl rules:\n%s", addr, body, err, j, st, rules)
	}
	t.Logf("usnet-hello under systemd answers the peer: %q", strings.TrimSpace(body))
	pid := c.must(ctx, "systemctl", "show", "-p", "MainPID", "--value", helloUnit)
	status := readFileAt(t, fmt.Sprintf("/proc/%d/root/proc/%s/status", c.leader, pid))
	uid := strings.Fields(strings.SplitN(strings.SplitN(status, "Uid:", 2)[1], "\n", 2)[0])[0]
	if uid == "0" {
		t.Errorf("usnet-hello runs as root; DynamicUser=yes should give it a user of its own")
	}
	if ls := c.must(ctx, "ls", "-A", "/run/usnet-hello"); !strings.Contains(ls, "usnet-client") {
		t.Errorf("no control client socket in the RuntimeDirectory /run/usnet-hello: %q", ls)
	}
}

// stopHello stops the example unit: the port is no longer served and the
// runtime directory is gone.
func stopHello(ctx context.Context, t *testing.T, c *container, peer *netlab.NS, addr string) {
	t.Helper()
	c.must(ctx, "systemctl", "stop", helloUnit)
	if st := c.must(ctx, "systemctl", "show", "-p", "ActiveState", "--value", helloUnit); st != "inactive" {
		t.Errorf("%s: ActiveState=%s after stop (SIGTERM should end it with status 0)", helloUnit, st)
	}
	if _, err := helloGet(peer, addr, 0); err == nil {
		t.Errorf("http://%s/ still answers after the example stopped", addr)
	}
	if out, err := c.run(ctx, "ls", "-d", "/run/usnet-hello"); err == nil {
		t.Errorf("RuntimeDirectory left after stop: %s", out)
	}
}
