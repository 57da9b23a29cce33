package nflog

// Helpers for the tests that need root and a real kernel. Each such test
// makes a network namespace of its own, adds its rules and sends its
// traffic only inside it (on its loopback), and deletes it in t.Cleanup,
// which removes the rules too. The machine's own netfilter rules and
// interfaces are never touched.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/connscope/connscope/packet"
	"golang.org/x/sys/unix"
)

// needRoot skips the test unless it runs as root with ip and iptables at
// hand, and CONNSCOPE_SKIP_ROOT_TESTS is not 1.
func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Getenv("CONNSCOPE_SKIP_ROOT_TESTS") == "1" {
		tb.Skip("CONNSCOPE_SKIP_ROOT_TESTS=1: skipping a test that needs root and a network namespace")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, iptables, nfnetlink_log); run as root or set CONNSCOPE_SKIP_ROOT_TESTS=1")
	}
	for _, cmd := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(cmd); err != nil {
			tb.Skipf("needs %s in PATH (apt-get install iproute2 iptables)", cmd)
		}
	}
}

// netns is a network namespace made by a test.
type netns struct {
	name string
}

// newNetns adds a namespace cs-nflog-<random> with its loopback up, and
// deletes it when the test ends.
func newNetns(tb testing.TB) *netns {
	tb.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	ns := &netns{name: "cs-nflog-" + hex.EncodeToString(b[:])}
	run(tb, "ip", "netns", "add", ns.name)
	tb.Cleanup(func() {
		if out, err := command("ip", "netns", "del", ns.name); err != nil {
			tb.Errorf("delete namespace %s: %v: %s", ns.name, err, out)
		}
	})
	ns.exec(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// exec runs a command inside the namespace and returns its output.
func (ns *netns) exec(tb testing.TB, args ...string) string {
	tb.Helper()
	return run(tb, append([]string{"ip", "netns", "exec", ns.name}, args...)...)
}

func run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := command(args...)
	if err != nil {
		tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// command runs a short-lived command with a time limit, so that a hung
// tool cannot outlive the test.
func command(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// do runs fn on an OS thread switched into the namespace, then switches
// the thread back. Sockets created by fn stay in the namespace. If fn
// fails or the thread cannot be switched back, the thread stays locked
// and the runtime discards it when the goroutine ends.
func (ns *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			orig, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				return err
			}
			defer orig.Close()
			target, err := os.Open("/run/netns/" + ns.name)
			if err != nil {
				return err
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("setns %s: %w", ns.name, err)
			}
			if err := fn(); err != nil {
				return err
			}
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("restore the thread's namespace: %w", err)
			}
			runtime.UnlockOSThread()
			return nil
		}()
	}()
	return <-errc
}

// open opens an NFLOG socket inside the namespace and closes it when the
// test ends (before the namespace is deleted).
func (ns *netns) open(tb testing.TB, cfg Config) *Conn {
	tb.Helper()
	c, err := ns.tryOpen(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (ns *netns) tryOpen(cfg Config) (*Conn, error) {
	var c *Conn
	err := ns.do(func() (err error) {
		c, err = Open(cfg)
		return err
	})
	return c, err
}

// listen starts a TCP listener in the namespace that reads and discards
// whatever its peers send.
func (ns *netns) listen(tb testing.TB, network, addr string) *net.TCPListener {
	tb.Helper()
	var ln net.Listener
	if err := ns.do(func() (err error) {
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
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	return ln.(*net.TCPListener)
}

// dial connects to addr from inside the namespace.
func (ns *netns) dial(tb testing.TB, network, addr string) *net.TCPConn {
	tb.Helper()
	var conn net.Conn
	if err := ns.do(func() (err error) {
		conn, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

// logged is a copy of a Packet that outlives the callback, with its
// decoded record.
type logged struct {
	Packet
	rec    packet.Record
	decErr error
}

// reader runs Conn.Read in a goroutine and keeps copies of the packets.
type reader struct {
	c    *Conn
	mu   sync.Mutex
	pkts []logged
	done chan error
	once sync.Once
}

func startReader(tb testing.TB, c *Conn) *reader {
	r := &reader{c: c, done: make(chan error, 1)}
	go func() {
		r.done <- c.Read(func(p *Packet) {
			l := logged{Packet: *p}
			l.Payload = append([]byte(nil), p.Payload...)
			l.Prefix = append([]byte(nil), p.Prefix...)
			l.decErr = packet.Decode(l.Payload, l.Timestamp, &l.rec)
			r.mu.Lock()
			r.pkts = append(r.pkts, l)
			r.mu.Unlock()
		})
	}()
	tb.Cleanup(func() { r.stop(tb) })
	return r
}

// stop closes the Conn and waits for Read to return net.ErrClosed.
func (r *reader) stop(tb testing.TB) {
	r.once.Do(func() {
		_ = r.c.Close()
		select {
		case err := <-r.done:
			if !errors.Is(err, net.ErrClosed) {
				tb.Errorf("Read returned %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			tb.Errorf("Read still running 5 s after Close")
		}
	})
}

// waitFor polls until ok holds for the packets read so far, and returns
// them; it fails the test after the timeout.
func (r *reader) waitFor(tb testing.TB, what string, ok func([]logged) bool) []logged {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		pkts := append([]logged(nil), r.pkts...)
		r.mu.Unlock()
		if ok(pkts) {
			return pkts
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s; read %d packets, stats %+v", what, len(pkts), r.c.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// find returns the first packet for which match holds.
func find(pkts []logged, match func(*logged) bool) *logged {
	for i := range pkts {
		if match(&pkts[i]) {
			return &pkts[i]
		}
	}
	return nil
}
