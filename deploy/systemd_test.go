package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/client"
	"github.com/usnetd/usnetd/internal/netlab"
	"github.com/usnetd/usnetd/usnet"
)

// The unit under a real systemd: TestSystemdUnit boots systemd as PID 1 in
// a container (systemd-nspawn, over a root made of the host's /usr), in
// the network namespace of a lab's "host", installs usnetd there with
// `task install`, and runs it as the unit runs it on a real machine.
//
// The container's clients are this test binary again (TestMain), in the
// container, as an unprivileged user: clientEnv says how to attach.
const (
	clientEnv      = "USNETD_DEPLOY_CLIENT" // "dir:PATH" (control/client) or "usnet" (usnet.DialControl)
	clientIfaceEnv = "USNETD_DEPLOY_IFACE"
	clientOK       = "deploy client: answered"
	// The test binary inside the container.
	clientPath = "/opt/usnetd-test/client"
	// The user the clients run as, in the group ALLOW_GID.
	clientUID = 1000
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(clientEnv); mode != "" {
		os.Exit(clientMain(mode))
	}
	os.Exit(m.Run())
}

// clientMain attaches to usnetd at the default socket path, requests a
// channel and asks for the used ports: every request needs an answer.
func clientMain(mode string) int {
	iface := os.Getenv(clientIfaceEnv)
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "deploy client (%s): %v\n", mode, err)
		return 1
	}
	if dir, ok := strings.CutPrefix(mode, "dir:"); ok {
		c, err := client.Dial(client.Options{Dir: dir, Timeout: 5 * time.Second})
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		if !strings.HasPrefix(c.LocalAddr(), dir+"/") {
			return fail(fmt.Errorf("bound %s, not in %s", c.LocalAddr(), dir))
		}
		ch, err := c.RequestUDS(iface)
		if err != nil {
			return fail(err)
		}
		ch.Close()
		if _, err := c.QueryUsedPorts(); err != nil {
			return fail(err)
		}
		fmt.Printf("%s (%s)\n", clientOK, c.LocalAddr())
		return 0
	}
	att, err := usnet.DialControl(usnet.DefaultSocketPath)
	if err != nil {
		return fail(err)
	}
	defer att.Close()
	ch, err := att.RequestUDS(iface)
	if err != nil {
		return fail(err)
	}
	ch.Close()
	if _, err := att.QueryPortsInUse(6); err != nil {
		return fail(err)
	}
	fmt.Println(clientOK)
	return 0
}

// container is a systemd booted by systemd-nspawn.
type container struct {
	t      *testing.T
	root   string
	cmd    *exec.Cmd // unshare, which runs nspawn
	nspawn int       // PID of systemd-nspawn, in our namespace
	leader int       // PID of the container's systemd (PID 1 inside), in our namespace
	mu     sync.Mutex
	out    strings.Builder
	done   chan error
}

func (c *container) log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// run runs argv inside the container (every namespace of its PID 1) and
// returns its output.
func (c *container) run(ctx context.Context, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.leader), "-a", "--"}, argv...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (c *container) must(ctx context.Context, argv ...string) string {
	c.t.Helper()
	out, err := c.run(ctx, argv...)
	if err != nil {
		c.t.Fatalf("in the container: %q: %v\n%s", argv, err, out)
	}
	return out
}

// show is one property of usnetd.service.
func (c *container) show(ctx context.Context, prop string) string {
	c.t.Helper()
	return c.must(ctx, "systemctl", "show", "-p", prop, "--value", "usnetd.service")
}

// journal is usnetd's journal, for failure messages.
func (c *container) journal(ctx context.Context) string {
	out, _ := c.run(ctx, "journalctl", "--no-pager", "-o", "cat", "-n", "80", "-u", "usnetd.service")
	return out
}

// bootContainer starts systemd-nspawn over root in netns, with a bpffs of
// its own (mounted on the empty directory bpffs, in nspawn's mount
// namespace only) at /sys/fs/bpf: the unit has no CAP_SYS_ADMIN and cannot
// mount one; on a real host systemd mounts it at boot. This test binary is
// at clientPath. It waits until the container's systemd has booted.
// t.Cleanup shuts it down (SIGTERM: nspawn asks the container's systemd to
// power off; SIGKILL after 30 s).
func bootContainer(ctx context.Context, t *testing.T, root, netns, bpffs string) *container {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--directory=" + root, "--machine=usnetd-test-" + strconv.Itoa(os.Getpid()),
		"--boot", "--register=no", "--keep-unit", "--console=pipe", "--quiet",
		"--network-namespace-path=" + netns,
		"--bind-ro=/usr", "--bind=" + bpffs + ":/sys/fs/bpf", "--bind-ro=" + self + ":" + clientPath,
		// nspawn keeps CAP_NET_ADMIN only with a private network; the unit
		// asks for these, and its bounding set cuts them down again.
		"--capability=CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON,CAP_IPC_LOCK",
	}
	// nspawn runs as PID 1 of a PID namespace of its own (unshare
	// --kill-child), in a mount namespace of its own that holds the
	// container's bpffs: should this test die without its cleanup, its
	// unshare dies (Pdeathsig), then nspawn, and with it every process of
	// the container (whose PID namespace is nested in nspawn's) and the
	// mount.
	script := `mount -t bpf -o mode=0700 bpf "$0" && exec systemd-nspawn "$@"`
	cmd := exec.Command("unshare", append([]string{"--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
		"--", "sh", "-c", script, bpffs}, args...)...)
	// nspawn's own seccomp filter refuses bpf(2) (EPERM) whatever the
	// capabilities; the unit's SystemCallFilter= still applies inside.
	cmd.Env = append(os.Environ(), "SYSTEMD_SECCOMP=0")
	c := &container{t: t, root: root, cmd: cmd, done: make(chan error, 1)}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			c.mu.Lock()
			if c.out.Len() < 1<<20 {
				c.out.WriteString(sc.Text() + "\n")
			}
			c.mu.Unlock()
		}
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if c.nspawn > 0 {
			_ = unix.Kill(c.nspawn, unix.SIGTERM) // nspawn powers the container off
		} else {
			_ = cmd.Process.Kill()
		}
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill() // and unshare's --kill-child takes nspawn along
			<-c.done
			t.Errorf("the container did not power off within 30 s of SIGTERM")
		}
		// nspawn gone, its PID 1 may not be (SIGKILL of nspawn leaves it to
		// init): SIGKILL it, which ends its whole PID namespace.
		if c.leader > 0 && alive(c.leader) {
			if err := unix.Kill(c.leader, unix.SIGKILL); err == nil {
				for i := 0; i < 500 && alive(c.leader); i++ {
					time.Sleep(10 * time.Millisecond)
				}
				t.Errorf("the container's PID 1 outlived systemd-nspawn (killed it)")
			}
		}
	})
	for c.leader == 0 {
		select {
		case err := <-c.done:
			t.Fatalf("systemd-nspawn exited: %v\n%s", err, c.log())
		case <-ctx.Done():
			t.Fatalf("the container's systemd did not start:\n%s", c.log())
		case <-time.After(50 * time.Millisecond):
		}
		if c.nspawn == 0 {
			c.nspawn = childNamed(cmd.Process.Pid, "systemd-nspawn")
		}
		if c.nspawn != 0 {
			c.leader = childNamed(c.nspawn, "systemd")
		}
	}
	var out string
	for {
		// Until the container's systemd has mounted /run and listens,
		// systemctl says "offline" or cannot connect.
		out, err = c.run(ctx, "systemctl", "is-system-running", "--wait")
		if out == "running" || out == "degraded" || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out != "running" && out != "degraded" {
		t.Fatalf("the container's systemd: %q, %v\n%s", out, err, c.log())
	}
	if out == "degraded" {
		failed, _ := c.run(ctx, "systemctl", "--failed", "--no-legend", "--plain")
		t.Logf("the container's systemd is degraded (units of the host's /usr that cannot run in a container): %s", failed)
	}
	return c
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// childNamed returns the PID of a child of ppid whose command is comm, or 0.
func childNamed(ppid int, comm string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", ppid, ppid))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		if c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(c)) == comm {
			return pid
		}
	}
	return 0
}

// makeRoot lays out a container root whose /usr will be the host's (a
// read-only bind), with what systemd needs to boot: os-release, an empty
// machine-id, the users.
func makeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc", "usr", "var", "run", "tmp", "root", "proc", "sys", "dev", "home", "opt/usnetd-test"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"os-release", "passwd", "group"} {
		b, err := os.ReadFile(filepath.Join("/etc", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc", f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, clientPath), nil, 0o755); err != nil { // the bind's mount point
		t.Fatal(err)
	}
	return root
}

// requireTask finds go-task, which is a Go module, not a Debian package.
func requireTask(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("task"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(home, "go/bin/task"); fileExists(p) {
			return p
		}
	}
	msg := "task (go-task) not found: go install github.com/go-task/task/v3/cmd/task@v3.54.0"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI must install it")
	}
	t.Skip(msg)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// probe connects from ns to addr: nil when it connected, a timeout error
// when nothing answered (the firewall dropped the SYN), another error for
// a reset.
func probe(ns *netlab.NS, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// TestSystemdUnit runs deploy/usnetd.service under systemd as PID 1 and
// checks what the unit promises:
//   - `task install` installs it, `systemctl start` returns once usnetd
//     sent READY=1 (Type=notify), and the unit is active;
//   - the CPUAffinity drop-in (cpuaffinity.conf, with this machine's last
//     CPU) applies to every thread of usnetd, RX workers included;
//   - unprivileged clients (in ALLOW_GID) with their sockets in /tmp and in
//     /run/user/UID get answers, through control/client and usnet;
//   - a stalled usnetd (SIGSTOP) is killed by the watchdog and started again
//     by systemd, and all the while the kernel stays filtered: a kernel
//     port that is not opened never answers a peer, the DEBUG_PORTS port
//     answers before and after;
//   - the example usnet program (deploy/usnet-hello.service, as a dynamic
//     user in ALLOW_GID) serves the peer, lives through usnetd's restart
//     by attaching again, and stops cleanly;
//   - `systemctl stop` leaves nothing: no pins under /sys/fs/bpf/usnetd, no
//     socket file, no XDP program on the NIC.
//
// Two settings of the unit cannot be had in the container and are set in a
// test drop-in instead, as a host with these limits would: this machine's
// hard RLIMIT_MEMLOCK is 8 MiB and not even root holds CAP_SYS_RESOURCE to
// raise it, so LimitMEMLOCK=infinity is replaced by CAP_IPC_LOCK (which
// lifts the limit for the UMEM); everything else is the unit as shipped.
// The whole test is bounded (a context of 6 minutes) and removes the
// container, the bpffs mount and the lab also when it fails; if the test
// process itself dies, the container and the mount die with it (see
// bootContainer).
func TestSystemdUnit(t *testing.T) {
	if testing.Short() {
		t.Skip("boots systemd in a container; not in -short")
	}
	netlab.Require(t)
	requireTool(t, "systemd-nspawn", "systemd-container")
	requireTool(t, "nsenter", "util-linux")
	requireTool(t, "setpriv", "util-linux")
	if !fileExists("/usr/lib/systemd/systemd") {
		requireTool(t, "/usr/lib/systemd/systemd", "systemd")
	}
	task := requireTask(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	// The lab: the container runs in "host"; "peer" probes the host's kernel.
	lab, err := netlab.New(t, "")
	if err != nil {
		t.Fatal(err)
	}
	host, err := lab.AddNS("host")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.AddNS("peer")
	if err != nil {
		t.Fatal(err)
	}
	ifname := lab.Name()
	if _, err := lab.Veth(host, ifname, peer, "eth0", netlab.VethOpts{Queues: 1, Up: true}); err != nil {
		t.Fatal(err)
	}
	sn := lab.Subnet()
	hostIP, peerIP := netlab.Host(sn, 1), netlab.Host(sn, 2)
	if err := host.AddAddr(ifname, hostIP); err != nil {
		t.Fatal(err)
	}
	if err := peer.AddAddr("eth0", peerIP); err != nil {
		t.Fatal(err)
	}
	h := hostIP.Addr().String()
	for _, port := range []string{"8022", "8082"} { // DEBUG_PORTS, and one that is not opened
		ln, err := host.Listen("tcp", h+":"+port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	open, closed := h+":8022", h+":8082"
	if err := probe(peer, closed, 5*time.Second); err != nil {
		t.Fatalf("the kernel port before usnetd: %v", err)
	}

	// The root, with usnetd installed by `task install`.
	root := makeRoot(t)
	cpu := runtime.NumCPU() - 1
	conf := fmt.Sprintf("INTERFACES=%s\nDEBUG_PORTS=%s:TCP:8022\nCPUS=%d\nALLOW_GID=%d\nLOG_LEVEL=debug\n", ifname, ifname, cpu, clientUID)
	if err := os.MkdirAll(filepath.Join(root, "etc/usnetd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/usnetd/usnetd.conf"), []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	install := exec.CommandContext(ctx, task, "install", "DESTDIR="+root, "PREFIX=/opt/usnetd")
	install.Dir = ".."
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("task install: %v\n%s", err, out)
	} else if !strings.Contains(string(out), "keeping the existing") {
		t.Errorf("task install did not keep the test's usnetd.conf:\n%s", out)
	}
	unitDir := filepath.Join(root, "etc/systemd/system")
	if !strings.Contains(readFileAt(t, filepath.Join(unitDir, "usnetd.service")), "ExecStart=/opt/usnetd/bin/usnetd") {
		t.Fatal("task install did not point ExecStart at PREFIX")
	}
	dropDir := filepath.Join(unitDir, "usnetd.service.d")
	if err := os.MkdirAll(dropDir, 0o755); err != nil {
		t.Fatal(err)
	}
	aff := strings.Replace(readFile(t, "usnetd.service.d/cpuaffinity.conf"), "\nCPUAffinity=2-6\n", fmt.Sprintf("\nCPUAffinity=%d\n", cpu), 1)
	if !strings.Contains(aff, fmt.Sprintf("\nCPUAffinity=%d\n", cpu)) {
		t.Fatal("cpuaffinity.conf has no line CPUAffinity=2-6 to adapt")
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	memlock := fmt.Sprintf("[Service]\n# This machine cannot raise RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE anywhere).\nLimitMEMLOCK=%d:%d\nCapabilityBoundingSet=CAP_IPC_LOCK\nAmbientCapabilities=CAP_IPC_LOCK\n", lim.Cur, lim.Max)
	for name, text := range map[string]string{"cpuaffinity.conf": aff, "zz-test-memlock.conf": memlock} {
		if err := os.WriteFile(filepath.Join(dropDir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The example usnet program and its unit (hello_test.go).
	installHello(ctx, t, root, "/opt/usnetd", ifname, clientUID)

	bpffs := t.TempDir()
	c := bootContainer(ctx, t, root, host.Path(), bpffs)
	pins := filepath.Join(fmt.Sprintf("/proc/%d/root", c.nspawn), bpffs, "usnetd") // the container's /sys/fs/bpf/usnetd
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\njournal of usnetd:\n%s", append(args, c.journal(ctx))...)
	}

	// READY=1.
	if out, err := c.run(ctx, "systemctl", "start", "usnetd.service"); err != nil {
		fail("systemctl start usnetd: %v\n%s", err, out)
	}
	if st := c.show(ctx, "ActiveState"); st != "active" {
		fail("ActiveState=%s after start", st)
	}
	// Type=notify: systemctl start returned once READY=1 came.
	t.Logf("active after READY=1; StatusText=%q", c.show(ctx, "StatusText"))
	if err := probe(peer, open, 5*time.Second); err != nil {
		fail("DEBUG_PORTS port under the unit: %v", err)
	}
	if err := probe(peer, closed, 700*time.Millisecond); !isTimeout(err) {
		fail("the port that is not opened, under the unit: %v, want no answer", err)
	}
	mainPID := c.show(ctx, "MainPID")
	if _, err := os.Stat(filepath.Join(pins, ifname)); err != nil {
		fail("no pins of usnetd under the container's /sys/fs/bpf: %v", err)
	}
	sock := fmt.Sprintf("/proc/%d/root/run/usnetd.socket", c.leader)
	if _, err := os.Lstat(sock); err != nil {
		fail("no control socket in the container's /run: %v", err)
	}

	// CPUAffinity: every thread of usnetd, RX workers included.
	threads, err := filepath.Glob(fmt.Sprintf("/proc/%d/root/proc/%s/task/*/status", c.leader, mainPID))
	if err != nil || len(threads) < 2 {
		fail("threads of usnetd (PID %s in the container): %v %v", mainPID, threads, err)
	}
	t.Logf("%d threads of usnetd", len(threads))
	for _, th := range threads {
		if got := statusField(t, th, "Cpus_allowed_list"); got != strconv.Itoa(cpu) {
			t.Errorf("%s: Cpus_allowed_list %s, want %d (CPUAffinity=)", th, got, cpu)
		}
	}

	// Clients of an unprivileged user in ALLOW_GID, sockets in /tmp and in
	// /run/user/UID, by control/client and by usnet.
	uid := strconv.Itoa(clientUID)
	c.must(ctx, "install", "-d", "-m", "0700", "-o", uid, "-g", uid, "/run/user/"+uid)
	for _, cl := range []struct{ name, mode, env string }{
		{"control/client, /tmp", "dir:/tmp", ""},
		{"control/client, /run/user/" + uid, "dir:/run/user/" + uid, ""},
		{"usnet, XDG_RUNTIME_DIR", "usnet", "XDG_RUNTIME_DIR=/run/user/" + uid},
		{"usnet, TMPDIR", "usnet", "TMPDIR=/tmp"},
	} {
		argv := []string{"setpriv", "--reuid=" + uid, "--regid=" + uid, "--clear-groups", "--",
			"env", "-i", clientEnv + "=" + cl.mode, clientIfaceEnv + "=" + ifname, "GORACE=atexit_sleep_ms=0"}
		if cl.env != "" {
			argv = append(argv, cl.env)
		}
		if cl.name == "usnet, TMPDIR" {
			// No runtime directory at all: usnet falls back to TMPDIR.
			c.must(ctx, "rm", "-rf", "/run/user/"+uid)
		}
		out, err := c.run(ctx, append(argv, clientPath)...)
		if err != nil || !strings.Contains(out, clientOK) {
			t.Errorf("client %s: %v\n%s\njournal:\n%s", cl.name, err, out, c.journal(ctx))
		} else {
			t.Logf("client %s: %s", cl.name, out)
		}
	}

	// Without CAP_DAC_READ_SEARCH, usnetd cannot reach a client in
	// /run/user/UID (mode 0700): that client gets no answer, the one in
	// /tmp still does. (A drop-in takes the capability away; then the
	// unit as installed again.)
	runClient := func(dir string) (string, error) {
		return c.run(ctx, "setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups", "--",
			"env", "-i", clientEnv+"=dir:"+dir, clientIfaceEnv+"="+ifname, "GORACE=atexit_sleep_ms=0", clientPath)
	}
	noDAC := filepath.Join(dropDir, "zz-test-no-dac.conf")
	if err := os.WriteFile(noDAC, []byte("[Service]\nCapabilityBoundingSet=~CAP_DAC_READ_SEARCH\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.must(ctx, "systemctl", "daemon-reload")
	c.must(ctx, "systemctl", "restart", "usnetd.service")
	c.must(ctx, "install", "-d", "-m", "0700", "-o", uid, "-g", uid, "/run/user/"+uid)
	if out, err := runClient("/run/user/" + uid); err == nil {
		t.Errorf("a client in /run/user/%s got answers without CAP_DAC_READ_SEARCH: the capability is not needed?\n%s", uid, out)
	} else {
		t.Logf("without CAP_DAC_READ_SEARCH, client in /run/user/%s: %s", uid, out)
	}
	if out, err := runClient("/tmp"); err != nil {
		t.Errorf("client in /tmp without CAP_DAC_READ_SEARCH: %v\n%s", err, out)
	}
	if err := os.Remove(noDAC); err != nil {
		t.Fatal(err)
	}
	c.must(ctx, "systemctl", "daemon-reload")
	c.must(ctx, "systemctl", "restart", "usnetd.service")
	if out, err := runClient("/run/user/" + uid); err != nil {
		t.Errorf("client in /run/user/%s with the unit as installed: %v\n%s", uid, err, out)
	}
	mainPID = c.show(ctx, "MainPID")

	// The example usnet program under its unit serves the peer on the
	// shared address; it lives through the restart of usnetd below.
	helloAddr := h + ":" + helloPort
	checkHello(ctx, t, c, peer, helloAddr)

	// The watchdog: SIGSTOP, and the kernel stays filtered until a new
	// usnetd is up.
	c.must(ctx, "kill", "-STOP", mainPID)
	probes := 0
	var newPID string
	for {
		if err := probe(peer, closed, 300*time.Millisecond); !isTimeout(err) {
			fail("the port that is not opened answered %d probes into the stall (%v): the kernel was not filtered", probes, err)
		}
		probes++
		if pid := c.show(ctx, "MainPID"); pid != mainPID && pid != "0" && c.show(ctx, "ActiveState") == "active" {
			newPID = pid
			break
		}
		if ctx.Err() != nil {
			fail("no new usnetd after the stall (MainPID %s, NRestarts %s)", c.show(ctx, "MainPID"), c.show(ctx, "NRestarts"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("stalled usnetd %s replaced by %s; %d probes of the closed port, none answered", mainPID, newPID, probes)
	if n := c.show(ctx, "NRestarts"); n != "1" {
		t.Errorf("NRestarts=%s, want 1", n)
	}
	if j, _ := c.run(ctx, "journalctl", "--no-pager", "-o", "cat", "-u", "usnetd.service", "-g", "Failed with result 'watchdog'"); !strings.Contains(j, "watchdog") {
		t.Errorf("the journal does not say that the watchdog fired: %q", j)
	}
	if err := probe(peer, open, 5*time.Second); err != nil {
		fail("DEBUG_PORTS port after the restart: %v", err)
	}
	if err := probe(peer, closed, 700*time.Millisecond); !isTimeout(err) {
		fail("the port that is not opened, after the restart: %v, want no answer", err)
	}
	// The example attached again to the new usnetd (Wants=, not Requires=:
	// its unit was not restarted).
	if body, err := helloGet(peer, helloAddr, 30*time.Second); err != nil {
		t.Errorf("usnet-hello after the restart of usnetd: %v", err)
	} else {
		t.Logf("usnet-hello after the restart of usnetd: %q", strings.TrimSpace(body))
	}
	if n := c.must(ctx, "systemctl", "show", "-p", "NRestarts", "--value", helloUnit); n != "0" {
		t.Errorf("%s restarted %s times; its stack should have attached again instead", helloUnit, n)
	}
	stopHello(ctx, t, c, peer, helloAddr)

	// systemctl stop leaves nothing.
	if out, err := c.run(ctx, "systemctl", "stop", "usnetd.service"); err != nil {
		fail("systemctl stop: %v\n%s", err, out)
	}
	if st := c.show(ctx, "ActiveState"); st != "inactive" {
		fail("ActiveState=%s after stop, want inactive", st)
	}
	if ents, err := os.ReadDir(pins); err == nil && len(ents) > 0 {
		t.Errorf("pins left under /sys/fs/bpf/usnetd: %v", ents)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left in the container's /run (%v)", err)
	}
	lk, err := host.Link(ifname)
	if err != nil {
		t.Fatal(err)
	}
	if x := lk.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP program %d left on %s", x.ProgId, ifname)
	}
	if err := probe(peer, closed, 5*time.Second); err != nil {
		t.Errorf("the kernel port after stop: %v (usnetd gives the kernel back)", err)
	}
}

func readFileAt(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// statusField is a field of a /proc/PID/status file.
func statusField(t *testing.T, path, key string) string {
	t.Helper()
	for _, line := range strings.Split(readFileAt(t, path), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s: no %s", path, key)
	return ""
}
