package rules

// The harness of the tests that need root and a real kernel.
//
// Every such test makes a network namespace cs-rules-<random> and runs
// every iptables program inside it, through wrapper scripts that
// Options.LookPath returns: each wrapper is
//
//	exec nsenter --net=/run/netns/<name> -- /usr/sbin/<program> "$@"
//
// so a program can only run in that namespace (nsenter fails, and nothing
// runs, once the namespace is gone). Setting the test's OS thread into the
// namespace would also reach iptables started from that thread, but not
// from any other goroutine (Run, cmd.Wait helpers), which would then
// change the machine's own rules; the wrappers cannot. The namespace is
// deleted in t.Cleanup, also when the test fails, which removes its rules.
//
// TestMain checks as well, by reading (never writing) the machine's own
// tables before and after, that no connscope rule appeared or vanished
// there.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	guard := rootTestsEnabled()
	var before string
	if guard {
		before = hostConnscopeRules()
	}
	code := m.Run()
	if guard {
		if after := hostConnscopeRules(); after != before {
			fmt.Fprintf(os.Stderr, "FAIL: the machine's own connscope rules changed during the tests:\nbefore:\n%s\nafter:\n%s\n", before, after)
			code = 1
		}
	}
	os.Exit(code)
}

func rootTestsEnabled() bool {
	return os.Getenv("CONNSCOPE_SKIP_ROOT_TESTS") != "1" && os.Geteuid() == 0
}

// hostConnscopeRules reads (iptables-save, no -t, which creates nothing)
// the lines that mention connscope in the machine's own tables.
func hostConnscopeRules() string {
	var b strings.Builder
	for _, b2 := range allBackends {
		for _, f := range allFamilies {
			name := program(f, b2, true)
			out, err := exec.Command(name).Output()
			if err != nil {
				fmt.Fprintf(&b, "%s: %v\n", name, err)
				continue
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(strings.ToLower(l), "connscope") {
					fmt.Fprintf(&b, "%s: %s\n", name, l)
				}
			}
		}
	}
	return b.String()
}

// needRoot skips the test unless it runs as root with the programs the
// harness needs, and CONNSCOPE_SKIP_ROOT_TESTS is not 1.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Getenv("CONNSCOPE_SKIP_ROOT_TESTS") == "1" {
		t.Skip("CONNSCOPE_SKIP_ROOT_TESTS=1: skipping a test that needs root, a network namespace and iptables")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces and iptables); run as root or set CONNSCOPE_SKIP_ROOT_TESTS=1")
	}
	for _, cmd := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("needs %s in PATH (apt-get install iproute2 util-linux)", cmd)
		}
	}
	for _, b := range allBackends {
		for _, f := range allFamilies {
			for _, save := range []bool{false, true} {
				if _, err := exec.LookPath(program(f, b, save)); err != nil {
					t.Skipf("needs %s (apt-get install iptables)", program(f, b, save))
				}
			}
		}
	}
}

// testNS is a network namespace made by one test, with wrappers that run
// each iptables program inside it.
type testNS struct {
	t    *testing.T
	name string
	dir  string // the wrappers
}

// newTestNS makes the namespace, with its loopback up, and deletes it
// when the test ends.
func newTestNS(t *testing.T) *testNS {
	t.Helper()
	needRoot(t)
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	ns := &testNS{t: t, name: "cs-rules-" + hex.EncodeToString(r[:]), dir: t.TempDir()}
	mustRun(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", ns.name, err, out)
		}
	})
	ns.assertNotHost()
	for _, b := range allBackends {
		for _, f := range allFamilies {
			for _, save := range []bool{false, true} {
				ns.writeWrapper(program(f, b, save), "")
			}
		}
	}
	mustRun(t, "nsenter", "--net="+ns.path(), "--", "ip", "link", "set", "lo", "up")
	return ns
}

func (ns *testNS) path() string { return "/run/netns/" + ns.name }

// assertNotHost fails the test unless the namespace file is a network
// namespace other than the one the test process runs in.
func (ns *testNS) assertNotHost() {
	var nsStat, self unix.Stat_t
	if err := unix.Stat(ns.path(), &nsStat); err != nil {
		ns.t.Fatalf("namespace %s: %v", ns.name, err)
	}
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		ns.t.Fatal(err)
	}
	if nsStat.Ino == self.Ino && nsStat.Dev == self.Dev {
		ns.t.Fatalf("namespace %s is the test process's own: refusing to run iptables in it", ns.name)
	}
}

// writeWrapper writes the script that runs prog in the namespace, with
// an optional command (e.g. setpriv ...) in front of it.
func (ns *testNS) writeWrapper(prog, via string) {
	real, err := exec.LookPath(prog)
	if err != nil {
		ns.t.Fatal(err)
	}
	if via != "" {
		via += " "
	}
	script := fmt.Sprintf("#!/bin/sh\n# connscope rules test: runs %s in network namespace %s only\nexec nsenter --net=%s -- %s%s \"$@\"\n",
		prog, ns.name, ns.path(), via, real)
	if err := os.WriteFile(filepath.Join(ns.dir, prog), []byte(script), 0o755); err != nil {
		ns.t.Fatal(err)
	}
}

// lookPath is Options.LookPath: only the namespace's wrappers exist.
func (ns *testNS) lookPath(name string) (string, error) {
	p := filepath.Join(ns.dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("test harness: no wrapper for %s in namespace %s, refusing to run it: %w", name, ns.name, err)
	}
	return p, nil
}

// options are the Options every manager of a test gets: never without
// the namespace's LookPath.
func (ns *testNS) options(b Backend) Options {
	return Options{Backend: b, LookPath: ns.lookPath, Logger: testLogger(ns.t)}
}

// manager makes a manager that works in the namespace.
func (ns *testNS) manager(p Policy, b Backend) *Manager {
	ns.t.Helper()
	opts := ns.options(b)
	assertNamespaced(ns.t, opts)
	m, err := NewManager(p, opts)
	if err != nil {
		ns.t.Fatalf("NewManager(%s, %s): %v", p.Name, b, err)
	}
	if m.Backend().Backend != b && b != BackendAuto {
		ns.t.Fatalf("manager chose %s, want %s", m.Backend().Backend, b)
	}
	return m
}

// assertNamespaced refuses options that would run iptables outside a
// test namespace.
func assertNamespaced(t *testing.T, opts Options) {
	t.Helper()
	if opts.LookPath == nil {
		t.Fatal("test harness: Options without LookPath would run the machine's own iptables")
	}
	for _, b := range allBackends {
		for _, f := range allFamilies {
			p, err := opts.LookPath(program(f, b, false))
			if err != nil {
				continue
			}
			script, err := os.ReadFile(p)
			if err != nil || !strings.Contains(string(script), "nsenter --net=/run/netns/cs-rules-") {
				t.Fatalf("test harness: %s is not a namespace wrapper", p)
			}
		}
	}
}

// ipt runs an iptables program of the namespace, as someone other than
// the manager would, and returns its output.
func (ns *testNS) ipt(b Backend, f Family, args ...string) string {
	ns.t.Helper()
	path, err := ns.lookPath(program(f, b, false))
	if err != nil {
		ns.t.Fatal(err)
	}
	return mustRun(ns.t, append([]string{path}, args...)...)
}

// iptBoth runs the same iptables arguments in both families.
func (ns *testNS) iptBoth(b Backend, args ...string) {
	ns.t.Helper()
	for _, f := range allFamilies {
		ns.ipt(b, f, args...)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save is the mangle table of both families as iptables-save prints it,
// without its '#' lines and with chain counters zeroed.
func (ns *testNS) save(b Backend) string {
	ns.t.Helper()
	var out strings.Builder
	for _, f := range allFamilies {
		path, err := ns.lookPath(program(f, b, true))
		if err != nil {
			ns.t.Fatal(err)
		}
		fmt.Fprintf(&out, "== %s\n", f)
		for _, l := range strings.Split(mustRun(ns.t, path, "-t", "mangle"), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			out.WriteString(counters.ReplaceAllString(l, "[0:0]"))
			out.WriteByte('\n')
		}
	}
	return out.String()
}

// saveAll is every table of a backend, both families, as iptables-save
// prints them without a table name (which creates nothing).
func (ns *testNS) saveAll(b Backend) string {
	ns.t.Helper()
	var out strings.Builder
	for _, f := range allFamilies {
		path, err := ns.lookPath(program(f, b, true))
		if err != nil {
			ns.t.Fatal(err)
		}
		for _, l := range strings.Split(mustRun(ns.t, path), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				out.WriteString(l + "\n")
			}
		}
	}
	return out.String()
}

// do runs fn on an OS thread switched into the namespace, then switches
// the thread back. Sockets fn creates stay in the namespace. It is used
// for sockets only, never to run iptables. If the thread cannot be
// switched back it stays locked, and the runtime discards it when the
// goroutine ends.
func (ns *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			orig, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				return err
			}
			defer orig.Close()
			target, err := os.Open(ns.path())
			if err != nil {
				return err
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("setns %s: %w", ns.name, err)
			}
			ferr := fn()
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("restore the thread's namespace: %w", err)
			}
			runtime.UnlockOSThread()
			return ferr
		}()
	}()
	return <-errc
}

// start starts a long-running program in the namespace (nsenter), and
// stops it with SIGINT when the test ends. ready is a line the program
// prints on stderr once it is ready.
func (ns *testNS) start(ready string, args ...string) *exec.Cmd {
	ns.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + ns.path(), "--"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		ns.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		ns.t.Fatal(err)
	}
	stopped := false
	ns.t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), ready) {
				ok = true
				found <- true
			}
		}
		if !ok {
			found <- false
		}
	}()
	select {
	case ok := <-found:
		if !ok {
			ns.t.Fatalf("%s ended before printing %q", args[0], ready)
		}
	case <-time.After(10 * time.Second):
		ns.t.Fatalf("%s did not print %q within 10s", args[0], ready)
	}
	return cmd
}

// stop ends a program started by start with SIGINT and waits for it.
func stop(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s did not stop on SIGINT", cmd.Path)
	}
}

// mustRun runs a short command with a time limit and returns its stdout.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// forEachBackend runs the test once with iptables-nft and once with
// iptables-legacy.
func forEachBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	for _, b := range allBackends {
		t.Run(string(b), func(t *testing.T) { fn(t, b) })
	}
}

// otherBackend is the backend that is not b.
func otherBackend(b Backend) Backend {
	if b == BackendNFT {
		return BackendLegacy
	}
	return BackendNFT
}

// testLogger logs to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// hasLine reports whether text has a line containing s.
func hasLine(text, s string) bool {
	return slices.ContainsFunc(strings.Split(text, "\n"), func(l string) bool { return strings.Contains(l, s) })
}

// removeWrapper takes a program away from the namespace's LookPath, as if
// it were not installed.
func removeWrapper(ns *testNS, name string) error {
	return os.Remove(filepath.Join(ns.dir, name))
}

var lookPathErr = exec.LookPath
