package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
)

func TestStandaloneBadFlagsNameTheFlagAndRunNoIptables(t *testing.T) {
	dir := t.TempDir()
	db := "--store=sqlite://" + filepath.Join(dir, "c.db")
	req := []string{"--probability", "1", "--label-bit", "3", "--nflog-group", "5", db}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{db}, "--probability (probability): is required"},
		{append(req, "--sink", "grpc://x:1"), "--sink: standalone ships to its own classifier"},
		{append(req, "--sink-ca-file", "/ca.pem"), "--sink-ca-file: standalone ships to its own classifier"},
		{append(req, "--label-bit", "200"), "--label-bit (labelBit)"},
		{append(req, "--store=sqlite://relative.db"), "--store"},
		{append(req, "--retention=forever"), "--retention"},
		{append(req, "--http-addr=8080"), "HTTP address"},
		{append(req, "--idle-timeout=1us"), "idle timeout"},
		{append(req, "extra"), "unknown command"},
	} {
		record := fakeIptables(t)
		_, _, err := runCLI(t, append([]string{"standalone"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
		if got := invocations(t, record); got != "" {
			t.Errorf("%v: iptables ran:\n%s", tc.args, got)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "c.db")); err == nil {
		t.Error("a refused configuration created the store")
	}
}

// TestStandaloneClassifiesRealTraffic runs the built command in a server
// namespace at probability 1, makes real TCP connections to it from a
// client namespace that end at each stage, reads the stages back from the
// HTTP API, then stops it with SIGTERM and checks that no rule is left.
func TestStandaloneClassifiesRealTraffic(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces and iptables")
	netnstest.NeedTools(t, "apt-get install iptables ethtool", "iptables-save", "ip6tables-save")
	bin := filepath.Join(t.TempDir(), "connscope")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	client, server := netnstest.New(t, "sa-client"), netnstest.New(t, "sa-server")
	client.Must(t, "ip", "link", "add", "cs-c0", "type", "veth", "peer", "name", "cs-s0", "netns", server.Name())
	client.Must(t, "ip", "addr", "add", "10.233.1.1/24", "dev", "cs-c0")
	server.Must(t, "ip", "addr", "add", "10.233.1.2/24", "dev", "cs-s0")
	client.Must(t, "ip", "link", "set", "cs-c0", "up")
	server.Must(t, "ip", "link", "set", "cs-s0", "up")

	// A server that answers one line per connection and keeps it open.
	server.Listen(t, "tcp", "10.233.1.2:8000", func(c net.Conn) {
		buf := make([]byte, 512)
		if _, err := c.Read(buf); err == nil {
			c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nok\n"))
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c)
	})

	dir := t.TempDir()
	p := server.Start(t, dir, "standalone", bin, "standalone", "--probability", "1", "--label-bit", "9",
		"--nflog-group", "29", "--ports", "8000,8001", "--idle-timeout", "2s",
		"--store", "sqlite://"+filepath.Join(dir, "cs.db"), "--http-addr", "127.0.0.1:18080")
	p.WaitOutput(t, "rules installed", 30*time.Second)
	if n := connscopeRuleCount(t, server); n == 0 {
		t.Fatalf("no connscope rule installed:\n%s", p.Output())
	}

	// post_ack: handshake, then abort. post_psh: a request, then abort.
	// post_syn: a SYN to a port without listener (the server's RST ends it).
	if err := client.EndEarly("10.233.1.2:8000", "10.233.1.2:8001", 3); err != nil {
		t.Fatal(err)
	}

	var got map[string]string
	deadline := time.Now().Add(30 * time.Second)
	for {
		got = standaloneSummary(t, server, p.Output())
		if nonZero(got["post_syn"]) && nonZero(got["post_ack"]) && nonZero(got["post_psh"]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("summary %v lacks post_syn, post_ack or post_psh; log:\n%s", got, p.Output())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("summary: %v", got)

	syscall.Kill(p.Pid(), syscall.SIGTERM)
	if code := p.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("standalone exited %d after SIGTERM:\n%s", code, p.Output())
	}
	if n := connscopeRuleCount(t, server); n != 0 {
		t.Errorf("%d connscope rules left after SIGTERM", n)
	}
	if !strings.Contains(p.Output(), "rules removed") {
		t.Errorf("no 'rules removed' in the log:\n%s", p.Output())
	}
}

func nonZero(share string) bool {
	f, err := strconv.ParseFloat(share, 64)
	return err == nil && f > 0
}

// standaloneSummary reads the Radar summary's stage shares from inside ns.
func standaloneSummary(t *testing.T, ns *netnstest.NS, running string) map[string]string {
	t.Helper()
	got, err := ns.RadarSummary("127.0.0.1:18080")
	if err != nil {
		t.Fatalf("%v; is it running: %v", err, running)
	}
	return got
}

// connscopeRuleCount counts lines of connscope (chains, jumps, comments) in
// every backend's rule set of ns.
func connscopeRuleCount(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	n := 0
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(prog); err != nil {
			continue
		}
		out, err := ns.Run(time.Minute, prog)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(strings.ToLower(l), "connscope") {
				n++
			}
		}
	}
	return n
}
