package control

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/usnetd/usnetd/control/wire"
)

// FuzzProcess feeds arbitrary messages to the server as if this process
// had sent them: it must never panic, and every answer must be one a
// client can read: nothing, "OK", "ER", "$" with a descriptor, or JSON
// that DecodeAnswer takes.
func FuzzProcess(f *testing.F) {
	pid := os.Getpid()
	seeds := []struct{ edge, msg string }{
		{"RequestUDS for this process", fmt.Sprintf(`{"RequestUDS":["eth0",%d]}`, pid)},
		{"RequestUDS for another process", `{"RequestUDS":["eth0",1]}`},
		{"RequestUDS for an unknown NIC", fmt.Sprintf(`{"RequestUDS":["eth9",%d]}`, pid)},
		{"RequestNetmapPipe", fmt.Sprintf(`{"RequestNetmapPipe":["eth0",%d]}`, pid)},
		{"AddMatch", matchJSON("AddMatch", localIP, 8080, "", -1, 6)},
		{"AddMatch with remote", matchJSON("AddMatch", localIP, 8080, "198.18.1.2", 5000, 6)},
		{"AddMatch on the kernel's port", matchJSON("AddMatch", localIP, 22, "", -1, 6)},
		{"AddMatch ICMP", matchJSON("AddMatch", localIP, -1, "", -1, 1)},
		{"AddMatch IPv6", matchJSON("AddMatch", "2001:db8::1", 443, "2001:db8::2", -1, 17)},
		{"AddMatch mapped", `{"AddMatch":{"dst_addr":{"Ipv6":"::ffff:198.18.0.1"},"dst_port":80,"protocol":6}}`},
		{"RemoveMatch", matchJSON("RemoveMatch", localIP, 8080, "", -1, 6)},
		{"QueryUsedPorts", `"QueryUsedPorts"`},
		{"QueryStatus", `"QueryStatus"`},
		{"DeleteClient", `"DeleteClient"`},
		{"answer as request", `{"QueryUsedPortsAnswer":{"listening":[],"connected":[]}}`},
		{"garbage", "\x00\xff{"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.msg))
	}
	e := newEnv(f, func(c *ServerConfig) { c.Log = zerolog.Nop() })
	cred := unix.Ucred{Pid: int32(pid), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	from := clientAddr{name: e.dir + "/fuzz-client"}
	f.Fuzz(func(t *testing.T, body []byte) {
		noPidfd := -1
		a := e.srv.process(message{from: from, cred: cred, pidfd: &noPidfd, body: body}, zerolog.Nop())
		if a.file != nil {
			a.file.Close()
		}
		switch s := string(a.data); {
		case a.data == nil, s == wire.RawOK, s == wire.RawER:
			if a.file != nil {
				t.Fatalf("a descriptor with answer %q", s)
			}
		case s == wire.RawFD:
			if a.file == nil {
				t.Fatal(`"$" without a descriptor`)
			}
		default:
			if _, err := wire.DecodeAnswer(a.data); err != nil {
				t.Fatalf("answer %q does not decode: %v", s, err)
			}
		}
		// Back to a clean server for the next input.
		e.srv.process(message{from: from, cred: cred, pidfd: &noPidfd, body: []byte(`"DeleteClient"`)}, zerolog.Nop())
		if n := len(e.srv.Status().Endpoints); n != 0 {
			t.Fatalf("%d endpoints after DeleteClient", n)
		}
	})
}

// FuzzParseProcStatus: the /proc/PID/status parser never panics and
// returns what the text says.
func FuzzParseProcStatus(f *testing.F) {
	self, err := os.ReadFile("/proc/self/status")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []struct{ edge, in string }{
		{"this process", string(self)},
		{"the minimum", "Tgid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n"},
		{"groups", "Tgid: 7\nUid: 1 2 3 4\nGid: 5 6 7 8\nGroups: 10 20 65534\nCapEff: 0000000000000400\n"},
		{"no newline at the end", "Tgid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t0000000000000000"},
		{"missing CapEff", "Tgid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"},
		{"Tgid twice", "Tgid:\t1\nTgid:\t2\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n"},
		{"negative", "Tgid:\t-1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n"},
		{"too big", "Tgid:\t2147483648\nUid:\t4294967296\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t10000000000000000\n"},
		{"three uids", "Tgid:\t1\nUid:\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n"},
		{"colons only", ":\n::\n:::\n"},
		{"empty", ""},
	} {
		f.Add([]byte(s.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseProcStatus(b)
		if err != nil {
			return
		}
		if st.Tgid < 0 {
			t.Fatalf("negative Tgid %d", st.Tgid)
		}
		if !strings.Contains(string(b), "CapEff:") || !strings.Contains(string(b), "Tgid:") {
			t.Fatal("accepted without Tgid or CapEff")
		}
	})
}

func TestParseProcStatus(t *testing.T) {
	st, err := parseProcStatus([]byte("Name:\tx\nTgid:\t7\nPid:\t9\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nCapEff:\t0000000000000400\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Tgid != 7 || st.UID != [4]uint32{1, 2, 3, 4} || st.GID != [4]uint32{5, 6, 7, 8} ||
		fmt.Sprint(st.Groups) != "[10 20]" || st.CapEff != 1<<capNetBindService {
		t.Errorf("parsed %+v", st)
	}
	if !mayBindPrivileged(1, st) {
		t.Error("CAP_NET_BIND_SERVICE does not allow a privileged port")
	}
	st.CapEff = 0
	if mayBindPrivileged(1, st) {
		t.Error("no capability, not root, but allowed")
	}
	if !mayBindPrivileged(0, st) {
		t.Error("uid 0 not allowed")
	}
	self, err := readProcStatus("/proc", int32(os.Getpid()))
	if err != nil || self.Tgid != int32(os.Getpid()) || self.UID[0] != uint32(os.Getuid()) {
		t.Errorf("readProcStatus(self) = %+v, %v", self, err)
	}
}
