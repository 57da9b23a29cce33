package rules

// The harness of the tests that need root and a real kernel.
//
// Every such test makes a network namespace cs-rules-<random> (with
// internal/netnstest) and runs every iptables program inside it, through
// wrapper scripts that Options.LookPath returns: each wrapper is
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
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/connscope/connscope/internal/netnstest"
)

func TestMain(m *testing.M) {
	guard := netnstest.Enabled()
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
	netnstest.NeedRoot(t, "network namespaces and iptables")
	for _, b := range allBackends {
		for _, f := range allFamilies {
			for _, save := range []bool{false, true} {
				netnstest.NeedTools(t, "apt-get install iptables", program(f, b, save))
			}
		}
	}
}

// testNS is a network namespace made by one test, with wrappers that run
// each iptables program inside it.
type testNS struct {
	*netnstest.NS
	t   *testing.T
	dir string // the wrappers
}

// newTestNS makes the namespace, with its loopback up, and deletes it
// when the test ends.
func newTestNS(t *testing.T) *testNS {
	t.Helper()
	needRoot(t)
	ns := &testNS{NS: netnstest.New(t, "rules"), t: t, dir: t.TempDir()}
	ns.assertNotHost()
	for _, b := range allBackends {
		for _, f := range allFamilies {
			for _, save := range []bool{false, true} {
				ns.writeWrapper(program(f, b, save), "")
			}
		}
	}
	return ns
}

// assertNotHost fails the test unless the namespace file is a network
// namespace other than the one the test process runs in.
func (ns *testNS) assertNotHost() {
	var nsStat, self unix.Stat_t
	if err := unix.Stat(ns.Path(), &nsStat); err != nil {
		ns.t.Fatalf("namespace %s: %v", ns.Name(), err)
	}
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		ns.t.Fatal(err)
	}
	if nsStat.Ino == self.Ino && nsStat.Dev == self.Dev {
		ns.t.Fatalf("namespace %s is the test process's own: refusing to run iptables in it", ns.Name())
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
		prog, ns.Name(), ns.Path(), via, real)
	if err := os.WriteFile(filepath.Join(ns.dir, prog), []byte(script), 0o755); err != nil {
		ns.t.Fatal(err)
	}
}

// lookPath is Options.LookPath: only the namespace's wrappers exist.
func (ns *testNS) lookPath(name string) (string, error) {
	p := filepath.Join(ns.dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("test harness: no wrapper for %s in namespace %s, refusing to run it: %w", name, ns.Name(), err)
	}
	return p, nil
}

// options are the Options every manager of a test gets: never without
// the namespace's LookPath.
func (ns *testNS) options(b Backend) Options {
	return Options{Backend: b, LookPath: ns.lookPath, Logger: testLogger(ns.t), Generation: ns.generation}
}

// generation is the namespace's nf_tables generation (Options.Generation).
func (ns *testNS) generation() (uint32, error) {
	var g uint32
	err := ns.Do(func() (err error) {
		g, err = NFTGeneration()
		return err
	})
	return g, err
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
