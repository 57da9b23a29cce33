// Package netnstest holds the helpers of tests that need root and a real
// kernel: it skips a test unless it may run, makes network namespaces of
// the test's own (cs-<prefix>-<random>, loopback up) and deletes them when
// the test ends, also when it fails, runs commands and Go code inside them,
// and starts processes there that the test's cleanup kills by process
// group.
//
// What it does not do: it never touches the machine's own network
// namespace or its netfilter rules. The only commands it runs outside a
// test's namespace are `ip netns add` and `ip netns del` of that
// namespace; every other command runs under nsenter --net=/run/netns/<name>,
// and Go code runs on an OS thread switched into the namespace that is
// never switched back. It knows nothing of iptables: a package whose tests
// run iptables keeps its own guards on top of it (see agent/rules).
//
// CONNSCOPE_SKIP_ROOT_TESTS=1 makes every test that calls NeedRoot skip.
package netnstest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// skipEnv is the environment variable that, set to 1, skips the tests
// that need root.
const skipEnv = "CONNSCOPE_SKIP_ROOT_TESTS"

// commandTimeout bounds a command run by Must, and `ip netns add` and
// `ip netns del`, so that a hung tool cannot outlive the test.
const commandTimeout = time.Minute

// Enabled reports whether tests that need root may run: the process runs
// as root and CONNSCOPE_SKIP_ROOT_TESTS is not 1. A TestMain uses it to
// prepare or check what those tests share.
func Enabled() bool {
	return os.Getenv(skipEnv) != "1" && os.Geteuid() == 0
}

// NeedRoot skips the test unless Enabled, and unless ip and nsenter, which
// every namespace needs, are in PATH. needs says what the test needs root
// for, as the skip message shows it: "network namespaces and iptables".
func NeedRoot(tb testing.TB, needs string) {
	tb.Helper()
	if os.Getenv(skipEnv) == "1" {
		tb.Skipf("%s=1: skipping a test that needs root (%s)", skipEnv, needs)
	}
	if os.Geteuid() != 0 {
		tb.Skipf("needs root (%s); run as root or set %s=1", needs, skipEnv)
	}
	NeedTools(tb, "apt-get install iproute2 util-linux", "ip", "nsenter")
}

// NeedTools skips the test, naming the first of tools that is not in PATH
// and how to install it (install, e.g. "apt-get install tcpdump").
func NeedTools(tb testing.TB, install string, tools ...string) {
	tb.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("needs %s in PATH (%s)", tool, install)
		}
	}
}

// NS is a network namespace made by one test.
type NS struct {
	name string
}

// New adds a namespace cs-<prefix>-<8 random hex digits> with its loopback
// up, and deletes it when the test ends, also when the test fails. Cleanups
// run last-registered first, so the processes a test starts in it later
// (Start) are gone before it is deleted.
func New(tb testing.TB, prefix string) *NS {
	tb.Helper()
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		tb.Fatal(err)
	}
	ns := &NS{name: "cs-" + prefix + "-" + hex.EncodeToString(r[:])}
	if out, err := run(commandTimeout, "ip", "netns", "add", ns.name); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", ns.name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := run(commandTimeout, "ip", "netns", "del", ns.name); err != nil {
			tb.Errorf("delete namespace %s: %v: %s", ns.name, err, out)
		}
	})
	ns.Must(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// Name is the namespace's name, as `ip netns` knows it.
func (ns *NS) Name() string { return ns.name }

// Path is the namespace's file, /run/netns/<name>.
func (ns *NS) Path() string { return "/run/netns/" + ns.name }

// Run runs args inside the namespace, in a process group of its own that
// is killed whole after timeout, and returns its combined output. The error names the namespace, the
// command, its exit status (errors.As finds the *exec.ExitError) and its
// output.
func (ns *NS) Run(timeout time.Duration, args ...string) (string, error) {
	out, err := run(timeout, ns.enter(args)...)
	if err != nil {
		return out, fmt.Errorf("[%s] %s: %w\n%s", ns.name, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Must runs args inside the namespace and returns its combined output; it
// fails the test if the command fails or runs longer than a minute.
func (ns *NS) Must(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := ns.Run(commandTimeout, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// enter prefixes args with nsenter into the namespace. nsenter execs the
// program, so its PID is the program's.
func (ns *NS) enter(args []string) []string {
	return append([]string{"nsenter", "--net=" + ns.Path(), "--"}, args...)
}

// Do runs fn on an OS thread switched into the namespace and returns its
// error. Sockets fn creates stay in the namespace whichever thread uses
// them later. The thread is never switched back: it stays locked and the
// runtime ends it with its goroutine, so no other code ever runs in the
// namespace by accident, nor fn's code outside it.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			target, err := os.Open(ns.Path())
			if err != nil {
				return err
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("setns %s: %w", ns.name, err)
			}
			return fn()
		}()
	}()
	return <-errc
}

// Listen listens on addr ("127.0.0.1:0", "[::]:8080", ...) inside the
// namespace until the test ends, and calls handle for each connection in
// a goroutine of its own, closing the connection when handle returns.
// When the test ends the listener is closed and every handle waited for.
func (ns *NS) Listen(tb testing.TB, network, addr string, handle func(net.Conn)) net.Listener {
	tb.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}

// Get sends an HTTP/1.0 GET for path to addr ("127.0.0.1:8080") from
// inside the namespace and returns the response's status code and body.
// It dials on the namespace's thread (Do), as an http.Client's dialer
// goroutine may run on another; the whole exchange is bounded by timeout.
func (ns *NS) Get(addr, path string, timeout time.Duration) (int, []byte, error) {
	var (
		code int
		body []byte
	)
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		code = resp.StatusCode
		body, err = io.ReadAll(resp.Body)
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("[%s] GET http://%s%s: %w", ns.name, addr, path, err)
	}
	return code, body, nil
}

// Discard is a Listen handler that reads and discards what the peer sends.
func Discard(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

// groupCommand returns a command in a process group of its own, which is
// killed whole when ctx ends.
func groupCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// run runs args to completion within timeout; combined output.
func run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := groupCommand(ctx, args...).CombinedOutput()
	return string(out), err
}
