package netnstest_test

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/connscope/connscope/internal/netnstest"
)

func TestNewMakesAPrivateNamespaceWithLoopbackUp(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces")
	ns := netnstest.New(t, "nstest")
	if !strings.HasPrefix(ns.Name(), "cs-nstest-") || len(ns.Name()) != len("cs-nstest-")+8 {
		t.Errorf("name %q, want cs-nstest-<8 hex digits>", ns.Name())
	}
	var nsStat, self unix.Stat_t
	if err := unix.Stat(ns.Path(), &nsStat); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		t.Fatal(err)
	}
	if nsStat.Ino == self.Ino && nsStat.Dev == self.Dev {
		t.Fatalf("%s is the test process's own namespace", ns.Path())
	}
	var ifs []net.Interface
	if err := ns.Do(func() (err error) {
		ifs, err = net.Interfaces()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
		t.Errorf("interfaces seen by Do: %v, want lo only, up", ifs)
	}
	if out := ns.Must(t, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 1 || !strings.Contains(out, " lo: ") {
		t.Errorf("ip link inside the namespace:\n%s", out)
	}
}

func TestListenServesInsideTheNamespace(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces")
	ns := netnstest.New(t, "nstest")
	ln := ns.Listen(t, "tcp", "127.0.0.1:0", func(c net.Conn) { _, _ = c.Write([]byte("hi")) })
	var got []byte
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		got = make([]byte, 2)
		_, err = c.Read(got)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if string(got) != "hi" {
		t.Errorf("read %q, want %q", got, "hi")
	}
}

func TestStopSendsSIGINTToTheGroup(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces")
	ns := netnstest.New(t, "nstest")
	p := ns.Start(t, t.TempDir(), "trap", "sh", "-c", `trap 'echo interrupted; exit 0' INT; echo ready; while :; do sleep 0.1; done`)
	p.WaitOutput(t, "ready", 10*time.Second)
	if err := p.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Err() != nil || !strings.Contains(p.Output(), "interrupted") {
		t.Errorf("after Stop: %v, output %q", p.Err(), p.Output())
	}
}

// TestCleanupKillsTheProcessGroupAndDeletesTheNamespace runs a subtest
// that leaves a process with a child running, and checks after it ended.
func TestCleanupKillsTheProcessGroupAndDeletesTheNamespace(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces")
	var path string
	var pids []int
	t.Run("leaves", func(t *testing.T) {
		ns := netnstest.New(t, "nstest")
		path = ns.Path()
		p := ns.Start(t, t.TempDir(), "sleeper", "sh", "-c", "sleep 300 & echo child $!; wait")
		p.WaitOutput(t, "child ", 10*time.Second)
		p.WaitOutput(t, "\n", 10*time.Second)
		child, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(p.Output(), "child ")))
		if err != nil {
			t.Fatal(err)
		}
		pids = []int{p.Pid(), child}
	})
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after the test: %v, want it gone", path, err)
	}
	for _, pid := range pids {
		deadline := time.Now().Add(5 * time.Second)
		for !gone(pid) {
			if time.Now().After(deadline) {
				t.Errorf("process %d still runs after the test", pid)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// gone reports whether pid no longer exists or is a zombie.
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
