package scenarios

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The lab's addresses. They exist only on the veths inside the namespaces a
// test creates, so they never reach the machine's own network.
const (
	clientV4       = "10.231.1.2"
	routerClientV4 = "10.231.1.1"
	routerServerV4 = "10.231.2.1"
	serverV4       = "10.231.2.2"

	clientV6       = "fd00:c5:1::2"
	routerClientV6 = "fd00:c5:1::1"
	routerServerV6 = "fd00:c5:2::1"
	serverV6       = "fd00:c5:2::2"

	// Interface names and MACs are fixed: each lives in its own namespace.
	clientIf       = "cli0"
	routerClientIf = "rtr-c"
	routerServerIf = "rtr-s"
	serverIf       = "srv0"

	clientMAC       = "02:c5:01:00:00:02"
	routerClientMAC = "02:c5:01:00:00:01"
	routerServerMAC = "02:c5:02:00:00:01"
	serverMAC       = "02:c5:02:00:00:02"
)

// lab is a client -- router -- server topology of three network namespaces,
// and the processes a test started in them. Everything it creates is removed
// by the t.Cleanup that newLab registers.
type lab struct {
	t   *testing.T
	dir string // working directory: scripts' configs, process output, captures

	client, router, server string // namespace names, cs-<role>-<random>
	python                 string // a python3 that has scapy

	mu    sync.Mutex
	procs []*proc
}

// proc is a background process started by the lab, with its output in files.
type proc struct {
	name     string
	cmd      *exec.Cmd
	out, err string // paths of stdout and stderr
	done     chan struct{}
	waitErr  error
}

// newLab creates the namespaces, veths, addresses, static neighbours and
// routes, turns segmentation offloads off and forwarding on in the router.
// python is the python3 the lab runs hack/scenarios/*.py with. It needs root.
func newLab(t *testing.T, python string) *lab {
	t.Helper()
	suffix := randomSuffix(t)
	l := &lab{
		t:      t,
		python: python,
		dir:    t.TempDir(),
		client: "cs-client-" + suffix,
		router: "cs-router-" + suffix,
		server: "cs-server-" + suffix,
	}
	t.Cleanup(l.teardown)

	for _, ns := range []string{l.client, l.router, l.server} {
		l.must("", "ip", "netns", "add", ns)
		l.must(ns, "ip", "link", "set", "lo", "up")
	}
	// Each veth is created inside the namespaces directly, so its names never
	// meet the machine's own interfaces.
	l.must(l.client, "ip", "link", "add", clientIf, "address", clientMAC, "type", "veth",
		"peer", "name", routerClientIf, "address", routerClientMAC, "netns", l.router)
	l.must(l.server, "ip", "link", "add", serverIf, "address", serverMAC, "type", "veth",
		"peer", "name", routerServerIf, "address", routerServerMAC, "netns", l.router)

	type ifaddr struct{ ns, dev, v4, v6 string }
	for _, a := range []ifaddr{
		{l.client, clientIf, clientV4, clientV6},
		{l.router, routerClientIf, routerClientV4, routerClientV6},
		{l.router, routerServerIf, routerServerV4, routerServerV6},
		{l.server, serverIf, serverV4, serverV6},
	} {
		l.must(a.ns, "ip", "addr", "add", a.v4+"/24", "dev", a.dev)
		l.must(a.ns, "ip", "-6", "addr", "add", a.v6+"/64", "dev", a.dev, "nodad")
		// One segment is one captured packet.
		l.must(a.ns, "ethtool", "-K", a.dev, "tso", "off", "gso", "off", "gro", "off")
		l.must(a.ns, "ip", "link", "set", a.dev, "up")
	}
	l.must(l.client, "ip", "route", "add", "default", "via", routerClientV4)
	l.must(l.client, "ip", "-6", "route", "add", "default", "via", routerClientV6)
	l.must(l.server, "ip", "route", "add", "default", "via", routerServerV4)
	l.must(l.server, "ip", "-6", "route", "add", "default", "via", routerServerV6)
	// Static neighbours: no ARP or neighbour discovery delays a first packet.
	// (A first IPv6 SYN held ~1 s in the neighbour queue went out together
	// with its retransmission: two identical SYNs, excluded multiple_syn.)
	type neigh struct{ ns, dev, v4, v6, mac string }
	for _, n := range []neigh{
		{l.client, clientIf, routerClientV4, routerClientV6, routerClientMAC},
		{l.router, routerClientIf, clientV4, clientV6, clientMAC},
		{l.router, routerServerIf, serverV4, serverV6, serverMAC},
		{l.server, serverIf, routerServerV4, routerServerV6, routerServerMAC},
	} {
		l.must(n.ns, "ip", "neigh", "replace", n.v4, "lladdr", n.mac, "dev", n.dev, "nud", "permanent")
		l.must(n.ns, "ip", "-6", "neigh", "replace", n.v6, "lladdr", n.mac, "dev", n.dev, "nud", "permanent")
	}
	l.must(l.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.must(l.router, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
	return l
}

// randomSuffix returns 8 random hex digits for unique namespace names.
func randomSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random namespace suffix: %v", err)
	}
	return hex.EncodeToString(b)
}

// command returns the command that runs args in namespace ns ("" is the
// machine's own namespace, used only for `ip netns add/del`). Each command
// gets a process group of its own so that teardown can kill it with its
// children.
func command(ctx context.Context, ns string, args ...string) *exec.Cmd {
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// run runs args in namespace ns to completion, within timeout, and returns its
// combined output. The error names the namespace, the command, its exit status
// and its output.
func (l *lab) run(timeout time.Duration, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := command(ctx, ns, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("[%s] %s: %w\n%s", nsLabel(ns), strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// must runs args in namespace ns and fails the test if it fails.
func (l *lab) must(ns string, args ...string) string {
	l.t.Helper()
	out, err := l.run(30*time.Second, ns, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// runExit runs args in namespace ns and accepts the listed exit codes (a curl
// that times out by design exits 28). Any other outcome is an error.
func (l *lab) runExit(timeout time.Duration, ns string, codes []int, args ...string) (string, error) {
	out, err := l.run(timeout, ns, args...)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		for _, c := range codes {
			if exit.ExitCode() == c {
				return out, nil
			}
		}
	}
	return out, err
}

func nsLabel(ns string) string {
	if ns == "" {
		return "host"
	}
	return ns
}

// start starts args in namespace ns in the background, output to
// <dir>/<name>.out and .err. Teardown kills it if it is still running.
func (l *lab) start(name, ns string, args ...string) *proc {
	l.t.Helper()
	p := &proc{
		name: name,
		out:  filepath.Join(l.dir, name+".out"),
		err:  filepath.Join(l.dir, name+".err"),
		done: make(chan struct{}),
	}
	p.cmd = command(context.Background(), ns, args...)
	stdout, err := os.Create(p.out)
	if err != nil {
		l.t.Fatal(err)
	}
	stderr, err := os.Create(p.err)
	if err != nil {
		l.t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	if err := p.cmd.Start(); err != nil {
		l.t.Fatalf("start %s [%s] %s: %v", name, nsLabel(ns), strings.Join(args, " "), err)
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	go func() {
		p.waitErr = p.cmd.Wait()
		stdout.Close()
		stderr.Close()
		close(p.done)
	}()
	return p
}

// output returns what the process printed so far, stdout then stderr.
func (p *proc) output() string {
	o, _ := os.ReadFile(p.out)
	e, _ := os.ReadFile(p.err)
	return string(o) + string(e)
}

// waitFor waits until the process prints text (on stdout or stderr); it fails
// the test when the process exits first or timeout passes.
func (l *lab) waitFor(p *proc, text string, timeout time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), text) {
			return
		}
		select {
		case <-p.done:
			l.t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.waitErr, text, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	l.t.Fatalf("%s did not print %q within %v:\n%s", p.name, text, timeout, p.output())
}

// stop sends SIGINT to the process group (what Ctrl-C does, so captures flush
// their files) and waits for it to exit; after 5 s it kills the group.
func (l *lab) stop(p *proc) {
	l.t.Helper()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		l.t.Errorf("%s did not stop on SIGINT within 5 s; killed:\n%s", p.name, p.output())
	}
}

// teardown kills every process the lab started that still runs (by process
// group) and deletes the namespaces, which removes their veths, addresses
// and iptables rules with them.
func (l *lab) teardown() {
	l.mu.Lock()
	procs := l.procs
	l.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	for _, ns := range []string{l.client, l.router, l.server} {
		if out, err := l.run(30*time.Second, "", "ip", "netns", "del", ns); err != nil && !strings.Contains(out, "No such file") {
			l.t.Errorf("remove namespace: %v", err)
		}
	}
}
