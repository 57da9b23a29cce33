package scenarios

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
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

// lab is a client -- router -- server topology of three network namespaces
// (internal/netnstest), and the processes a test started in them.
// Everything it creates is removed by the test's cleanups, also when it
// fails: first the processes (killed by process group), then the
// namespaces, which takes their veths, addresses and iptables rules with
// them.
type lab struct {
	t   *testing.T
	dir string // working directory: scripts' configs, process output, captures

	client, router, server *netnstest.NS // cs-<role>-<random>
	python                 string        // a python3 that has scapy
}

// newLab creates the namespaces, veths, addresses, static neighbours and
// routes, turns segmentation offloads off and forwarding on in the router.
// python is the python3 the lab runs hack/scenarios/*.py with. It needs root.
func newLab(t *testing.T, python string) *lab {
	t.Helper()
	l := &lab{
		t:      t,
		python: python,
		dir:    t.TempDir(),
		client: netnstest.New(t, "client"),
		router: netnstest.New(t, "router"),
		server: netnstest.New(t, "server"),
	}
	// Each veth is created inside the namespaces directly, so its names never
	// meet the machine's own interfaces.
	l.client.Must(t, "ip", "link", "add", clientIf, "address", clientMAC, "type", "veth",
		"peer", "name", routerClientIf, "address", routerClientMAC, "netns", l.router.Name())
	l.server.Must(t, "ip", "link", "add", serverIf, "address", serverMAC, "type", "veth",
		"peer", "name", routerServerIf, "address", routerServerMAC, "netns", l.router.Name())

	type ifaddr struct {
		ns          *netnstest.NS
		dev, v4, v6 string
	}
	for _, a := range []ifaddr{
		{l.client, clientIf, clientV4, clientV6},
		{l.router, routerClientIf, routerClientV4, routerClientV6},
		{l.router, routerServerIf, routerServerV4, routerServerV6},
		{l.server, serverIf, serverV4, serverV6},
	} {
		a.ns.Must(t, "ip", "addr", "add", a.v4+"/24", "dev", a.dev)
		a.ns.Must(t, "ip", "-6", "addr", "add", a.v6+"/64", "dev", a.dev, "nodad")
		// One segment is one captured packet.
		a.ns.Must(t, "ethtool", "-K", a.dev, "tso", "off", "gso", "off", "gro", "off")
		a.ns.Must(t, "ip", "link", "set", a.dev, "up")
	}
	l.client.Must(t, "ip", "route", "add", "default", "via", routerClientV4)
	l.client.Must(t, "ip", "-6", "route", "add", "default", "via", routerClientV6)
	l.server.Must(t, "ip", "route", "add", "default", "via", routerServerV4)
	l.server.Must(t, "ip", "-6", "route", "add", "default", "via", routerServerV6)
	// Static neighbours: no ARP or neighbour discovery delays a first packet.
	// (A first IPv6 SYN held ~1 s in the neighbour queue went out together
	// with its retransmission: two identical SYNs, excluded multiple_syn.)
	type neigh struct {
		ns               *netnstest.NS
		dev, v4, v6, mac string
	}
	for _, n := range []neigh{
		{l.client, clientIf, routerClientV4, routerClientV6, routerClientMAC},
		{l.router, routerClientIf, clientV4, clientV6, clientMAC},
		{l.router, routerServerIf, serverV4, serverV6, serverMAC},
		{l.server, serverIf, routerServerV4, routerServerV6, routerServerMAC},
	} {
		n.ns.Must(t, "ip", "neigh", "replace", n.v4, "lladdr", n.mac, "dev", n.dev, "nud", "permanent")
		n.ns.Must(t, "ip", "-6", "neigh", "replace", n.v6, "lladdr", n.mac, "dev", n.dev, "nud", "permanent")
	}
	l.router.Must(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.router.Must(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
	return l
}

// run runs args in namespace ns to completion, within timeout, and returns its
// combined output. The error names the namespace, the command, its exit status
// and its output. A nil ns is the machine's own namespace, used only for
// programs that read and write files (openssl req, tshark -r).
func (l *lab) run(timeout time.Duration, ns *netnstest.NS, args ...string) (string, error) {
	if ns != nil {
		return ns.Run(timeout, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("[host] %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// runExit runs args in namespace ns and accepts the listed exit codes (a curl
// that times out by design exits 28). Any other outcome is an error.
func (l *lab) runExit(timeout time.Duration, ns *netnstest.NS, codes []int, args ...string) (string, error) {
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

// start starts args in namespace ns in the background, output to
// <dir>/<name>.out and .err. The test's cleanup kills it by process group if
// it is still running.
func (l *lab) start(name string, ns *netnstest.NS, args ...string) *netnstest.Proc {
	l.t.Helper()
	return ns.Start(l.t, l.dir, name, args...)
}

// stop sends SIGINT to the process group (what Ctrl-C does, so captures flush
// their files) and waits for it to exit; after 5 s it kills the group.
func (l *lab) stop(p *netnstest.Proc) {
	l.t.Helper()
	if err := p.Stop(5 * time.Second); err != nil {
		l.t.Error(err)
	}
}
