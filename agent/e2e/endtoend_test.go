package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The end-to-end test's two namespaces, joined by one veth pair, with
// private test addresses that exist only inside them.
const (
	e2eClientV4 = "10.232.1.1"
	e2eServerV4 = "10.232.1.2"
	e2eClientV6 = "fd00:c6::1"
	e2eServerV6 = "fd00:c6::2"
	e2eClientIf = "cli0"
	e2eServerIf = "srv0"
	e2eClientMA = "02:c6:01:00:00:01"
	e2eServerMA = "02:c6:01:00:00:02"
	e2ePort     = 8080
)

// newPair makes a client and a server namespace joined by a veth pair,
// with offloads off (one segment, one packet) and static neighbours (no
// ARP or neighbour discovery delays a first packet).
func newPair(t *testing.T) (client, server *netns) {
	t.Helper()
	client, server = newNS(t, "cli"), newNS(t, "srv")
	// Created inside the namespaces, so the names never meet the machine's.
	client.Must(t, "ip", "link", "add", e2eClientIf, "address", e2eClientMA, "type", "veth",
		"peer", "name", e2eServerIf, "address", e2eServerMA, "netns", server.Name())
	for _, side := range []struct {
		ns              *netns
		dev, v4, v6     string
		peer4, peer6, m string
	}{
		{client, e2eClientIf, e2eClientV4, e2eClientV6, e2eServerV4, e2eServerV6, e2eServerMA},
		{server, e2eServerIf, e2eServerV4, e2eServerV6, e2eClientV4, e2eClientV6, e2eClientMA},
	} {
		side.ns.Must(t, "ip", "addr", "add", side.v4+"/24", "dev", side.dev)
		side.ns.Must(t, "ip", "-6", "addr", "add", side.v6+"/64", "dev", side.dev, "nodad")
		side.ns.Must(t, "ethtool", "-K", side.dev, "tso", "off", "gso", "off", "gro", "off")
		side.ns.Must(t, "ip", "link", "set", side.dev, "up")
		side.ns.Must(t, "ip", "neigh", "replace", side.peer4, "lladdr", side.m, "dev", side.dev, "nud", "permanent")
		side.ns.Must(t, "ip", "-6", "neigh", "replace", side.peer6, "lladdr", side.m, "dev", side.dev, "nud", "permanent")
	}
	return client, server
}

// TestEndToEndAgentFileClassifiesLikeTcpdump runs the agent in a server
// namespace at probability 1 with the file sink while real traffic comes
// from a client namespace: curl over HTTP (IPv4 and IPv6), clients that
// abort with SO_LINGER 0, and hping3 SYNs. tcpdump -Q in captures what the
// server receives at the same time. `connscope classify` must give every
// connection the same verdict on both files, and the verdicts the traffic
// calls for.
func TestEndToEndAgentFileClassifiesLikeTcpdump(t *testing.T) {
	needRoot(t, "ethtool", "tcpdump", "curl", "hping3")
	client, server := newPair(t)
	dir := t.TempDir()
	agentFile := filepath.Join(dir, "agent.pcapng")
	dumpFile := filepath.Join(dir, "tcpdump.pcap")

	server.serve(fmt.Sprintf("[::]:%d", e2ePort)) // IPv4 and IPv6
	dump := server.start("tcpdump", "tcpdump", "-Q", "in", "-i", e2eServerIf, "-n", "-U", "-Z", "root", "-w", dumpFile, "tcp")
	dump.WaitOutput(t, "listening on "+e2eServerIf, startTimeout)
	a := server.startAgent("agent", "--policy", "e2e", "--label-bit", "3", "--nflog-group", "5", "--probability", "1",
		"--backend", "nft", "--sink", "file://"+agentFile)
	a.waitReady(startTimeout)

	kinds := map[connKey]string{}
	url4 := fmt.Sprintf("http://%s:%d/", e2eServerV4, e2ePort)
	url6 := fmt.Sprintf("http://[%s]:%d/", e2eServerV6, e2ePort)
	for i, url := range []string{url4, url4, url4, url6, url6} {
		port := 43000 + i
		client.Must(t, "curl", "-sS", "-g", "-o", "/dev/null", "--max-time", "10", "--local-port", strconv.Itoa(port), url)
		src := e2eClientV4
		if url == url6 {
			src = e2eClientV6
		}
		kinds[connKey{src, uint16(port)}] = "curl"
	}
	for _, addr := range []string{e2eServerV4, e2eServerV4, "[" + e2eServerV6 + "]"} {
		port := client.abort(fmt.Sprintf("%s:%d", addr, e2ePort))
		src := e2eClientV4
		if addr[0] == '[' {
			src = e2eClientV6
		}
		kinds[connKey{src, port}] = "linger"
	}
	for i := range 3 {
		port := 41000 + i
		// hping3 exits 1 when no reply came back; replies do not matter.
		_, err := client.Run(time.Minute, "hping3", "-q", "-S", "-c", "1", "-s", strconv.Itoa(port), "-p", strconv.Itoa(e2ePort), e2eServerV4)
		var exit *exec.ExitError
		if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
			t.Fatalf("hping3: %v", err)
		}
		kinds[connKey{e2eClientV4, uint16(port)}] = "hping3"
	}
	time.Sleep(time.Second) // the last resets and acknowledgements pass

	if code := dump.signal(syscall.SIGINT, stopTimeout); code != 0 {
		t.Fatalf("tcpdump exit status %d:\n%s", code, dump.Output())
	}
	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("agent exit status %d:\n%s", code, a.Output())
	}

	fromAgent := classify(t, agentFile, e2ePort)
	fromDump := classify(t, dumpFile, e2ePort)
	if len(fromAgent) != len(kinds) || len(fromDump) != len(kinds) {
		t.Errorf("connections: %d in the agent's file, %d in tcpdump's, %d made", len(fromAgent), len(fromDump), len(kinds))
	}
	want := map[string]string{
		"curl":   `stage="no_match" tags=[] signature="" excluded=""`,
		"linger": `stage="post_ack" tags=[reset single_rstack] signature="SYN; ACK → RST+ACK" excluded=""`,
		"hping3": `stage="post_syn" tags=[reset single_rst] signature="SYN → RST" excluded=""`,
	}
	keys := make([]connKey, 0, len(kinds))
	for k := range kinds {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y connKey) int { return int(x.port) - int(y.port) })
	for _, k := range keys {
		ag, okA := fromAgent[k]
		td, okT := fromDump[k]
		switch {
		case !okA || !okT:
			t.Errorf("%s %v: in the agent's file %v, in tcpdump's %v", kinds[k], k, okA, okT)
			continue
		case ag.verdict() != td.verdict():
			t.Errorf("%s %v: agent's file %s, tcpdump's %s", kinds[k], k, ag.verdict(), td.verdict())
		}
		v := fmt.Sprintf("stage=%q tags=%v signature=%q excluded=%q", ag.Stage, ag.Tags, ag.Signature, ag.Excluded)
		if v != want[kinds[k]] {
			t.Errorf("%s %v: %s, want %s", kinds[k], k, v, want[kinds[k]])
		}
		t.Logf("%-6s %-16s %5d  %s", kinds[k], k.client, k.port, ag.verdict())
	}
}
