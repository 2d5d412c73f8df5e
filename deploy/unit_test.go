package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// unitSettings returns the settings of a unit file, key → values in order
// (comments and section headers left out; no line continuations are used).
func unitSettings(t *testing.T, text string) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			t.Fatalf("line continuation in %q: keep settings on one line", line)
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("not KEY=VALUE: %q", line)
		}
		m[k] = append(m[k], v)
	}
	return m
}

// TestUnitVerifies runs `systemd-analyze verify` on the unit and its
// example drop-in. verify insists that ExecStart's binary exists, so the
// unit is copied to a temporary directory with ExecStart pointing at a
// stand-in there; the drop-in directory beside it is read too. verify
// reports unknown or malformed settings as warnings with exit status 0,
// so any line about our files fails the test.
func TestUnitVerifies(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	fake := filepath.Join(dir, "usnetd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := readFile(t, "usnetd.service")
	const exec0 = "ExecStart=/usr/local/bin/usnetd\n"
	if strings.Count(unit, exec0) != 1 {
		t.Fatalf("usnetd.service must have exactly one %q", exec0)
	}
	unit = strings.Replace(unit, exec0, "ExecStart="+fake+"\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "usnetd.service"), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "usnetd.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	dropin := readFile(t, "usnetd.service.d/cpuaffinity.conf")
	if err := os.WriteFile(filepath.Join(dir, "usnetd.service.d", "cpuaffinity.conf"), []byte(dropin), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, "usnetd.service")).CombinedOutput()
	t.Logf("systemd-analyze verify:\n%s", out)
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, dir) || strings.Contains(line, "usnetd") {
			t.Errorf("verify complains: %s", strings.TrimSpace(line))
		}
	}

	// The same mistake planted on purpose must be caught, or the check
	// above proves nothing.
	bad := strings.Replace(unit, "NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nNoSuchSetting=1\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "usnetd.service"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, "usnetd.service")).CombinedOutput()
	if !strings.Contains(string(out), "NoSuchSetting") {
		t.Errorf("verify did not report a planted unknown setting; output:\n%s", out)
	}
}

// TestUnitSettings pins down what the unit promises in README.md ("Operating usnetd") and
// capabilities.md.
func TestUnitSettings(t *testing.T) {
	s := unitSettings(t, readFile(t, "usnetd.service"))
	for k, want := range map[string]string{
		"Type":                    "notify",
		"NotifyAccess":            "main",
		"EnvironmentFile":         "-/etc/usnetd/usnetd.conf",
		"ExecStart":               "/usr/local/bin/usnetd",
		"Restart":                 "on-failure",
		"LimitMEMLOCK":            "infinity",
		"WatchdogSec":             "30s",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ReadWritePaths":          "/run /sys/fs/bpf",
		"MemoryDenyWriteExecute":  "yes",
		"RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_PACKET AF_XDP",
		"SystemCallArchitectures": "native",
	} {
		if got := s[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want [%q]", k, got, want)
		}
	}
	for _, k := range []string{"PrivateNetwork", "PrivateDevices", "ProtectClock", "ProtectProc", "ProcSubset", "PrivateUsers", "DynamicUser", "User", "RuntimeDirectory"} {
		if v, ok := s[k]; ok {
			t.Errorf("%s=%q is set; the unit explains why it must not be", k, v)
		}
	}

	bounding := strings.Fields(strings.Join(s["CapabilityBoundingSet"], " "))
	ambient := strings.Fields(strings.Join(s["AmbientCapabilities"], " "))
	if len(bounding) == 0 || !slices.Equal(bounding, ambient) {
		t.Errorf("CapabilityBoundingSet %q and AmbientCapabilities %q differ", bounding, ambient)
	}
	// capabilities.md has a table row for every capability, saying
	// whether the unit grants it; the granted ones are the unit's set.
	doc := readFile(t, "capabilities.md")
	row := regexp.MustCompile("(?m)^\\| `(CAP_[A-Z_]+)` \\| (yes|no)\\b[^|]*\\|")
	var granted []string
	for _, m := range row.FindAllStringSubmatch(doc, -1) {
		if m[2] == "yes" {
			granted = append(granted, m[1])
		}
	}
	slices.Sort(granted)
	set := slices.Clone(bounding)
	slices.Sort(set)
	if !slices.Equal(granted, set) {
		t.Errorf("capabilities.md grants %q, the unit %q", granted, set)
	}
	for _, c := range bounding {
		if !strings.Contains(readFile(t, "usnetd.service"), "#   "+c) {
			t.Errorf("the unit's comments do not explain %s", c)
		}
	}
}
