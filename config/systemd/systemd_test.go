package systemd

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/agent"
	"github.com/connscope/connscope/internal/netnstest"
)

const (
	unitFile   = "connscope.service"
	configFile = "standalone.yaml"
	// what the unit names, and the tests replace with their own copies
	installedBinary = "/usr/local/bin/connscope"
	installedConfig = "/etc/connscope/standalone.yaml"
	stateDirectory  = "/var/lib/connscope"
)

// unit is the [Service] section of connscope.service: each key's values in
// the order given.
type unit map[string][]string

func readUnit(t *testing.T) unit {
	t.Helper()
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not KEY=VALUE", unitFile, line)
			}
			u[k] = append(u[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// command returns the unit's only KEY= command line as arguments, with
// the installed paths replaced: the binary by bin, the configuration file
// by config, the state directory by state. The unit quotes nothing, so
// splitting at spaces is what systemd does with it.
func (u unit) command(t *testing.T, key, bin, config, state string) []string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("%s: want one %s=, have %d", unitFile, key, len(u[key]))
	}
	line := u[key][0]
	if strings.ContainsAny(line, `"'\$%`) {
		t.Fatalf("%s: %s=%s: quoting, escapes or specifiers: split it as systemd does", unitFile, key, line)
	}
	args := strings.Fields(line)
	if args[0] != installedBinary {
		t.Fatalf("%s: %s runs %s, want %s", unitFile, key, args[0], installedBinary)
	}
	args[0] = bin
	for i, a := range args {
		a = strings.ReplaceAll(a, installedConfig, config)
		args[i] = strings.ReplaceAll(a, stateDirectory, state)
	}
	return args
}

// boundingSet returns setpriv's --bounding-set argument for the unit's
// CapabilityBoundingSet, and the capability mask it leaves.
func (u unit) boundingSet(t *testing.T) (string, uint64) {
	t.Helper()
	bits := map[string]uint{"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
	arg, mask := "-all", uint64(0)
	for _, v := range u["CapabilityBoundingSet"] {
		for _, c := range strings.Fields(v) {
			b, ok := bits[c]
			if !ok {
				t.Fatalf("%s: CapabilityBoundingSet has %s; this test knows only %v", unitFile, c, bits)
			}
			arg += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
			mask |= 1 << b
		}
	}
	if mask == 0 {
		t.Fatalf("%s: no CapabilityBoundingSet", unitFile)
	}
	return arg, mask
}

func buildConnscope(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "connscope")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/connscope/connscope/cmd/connscope").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestUnitVerifies runs `systemd-analyze verify` on the unit, with the
// binary it names replaced by a freshly built one (verify checks that
// ExecStart's program exists and is executable).
func TestUnitVerifies(t *testing.T) {
	netnstest.NeedTools(t, "apt-get install systemd", "systemd-analyze")
	bin := buildConnscope(t)
	text, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(t.TempDir(), unitFile)
	if err := os.WriteFile(copied, []byte(strings.ReplaceAll(string(text), installedBinary, bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", copied).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnitExposureIsLow asks systemd-analyze for the unit's security
// exposure (offline, from the file): at most 3.0 of 10, systemd's "OK".
// What remains is what the agent needs: root for iptables, the host's
// network, CAP_NET_ADMIN and CAP_NET_RAW, netlink and IP sockets.
func TestUnitExposureIsLow(t *testing.T) {
	netnstest.NeedTools(t, "apt-get install systemd", "systemd-analyze")
	out, err := exec.Command("systemd-analyze", "security", "--offline=yes", "--threshold=30", "--no-pager", unitFile).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v (exposure above 3.0?)\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Log(lines[len(lines)-1])
}

// TestExampleConfigIsValid reads standalone.yaml with the agent's own
// configuration reader and checks it as `connscope standalone` does
// (with the stand-in sink standalone checks it with).
func TestExampleConfigIsValid(t *testing.T) {
	c, err := agent.LoadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	if c.Sink != "" {
		t.Errorf("%s: sink %q: standalone ships to its own classifier", configFile, c.Sink)
	}
	c.Sink = "grpc://127.0.0.1:1"
	if err := c.Validate(); err != nil {
		t.Fatalf("%s: %v", configFile, err)
	}
	if len(c.Ports) < 2 {
		t.Errorf("%s: ports %v: TestUnitRunsWithItsCapabilities wants two", configFile, c.Ports)
	}
}

// TestUnitRunsWithItsCapabilities runs the unit's ExecStart, as systemd
// would with CapabilityBoundingSet and NoNewPrivileges (setpriv applies
// both), in a server namespace, with the example configuration at
// probability 1. It checks the process holds exactly the unit's
// capabilities, that real connections from a client namespace reach the
// Radar API, and that SIGTERM (systemd's KillSignal) removes the rules.
// Then it kills a second run with SIGKILL and checks that ExecStopPost,
// run the same way, removes what the killed process left.
func TestUnitRunsWithItsCapabilities(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces and iptables")
	netnstest.NeedTools(t, "apt-get install iptables util-linux", "setpriv", "iptables-nft-save", "iptables-legacy-save")
	u := readUnit(t)
	bounding, mask := u.boundingSet(t)
	if got := u["NoNewPrivileges"]; len(got) != 1 || got[0] != "yes" {
		t.Fatalf("%s: NoNewPrivileges=%v, want yes", unitFile, got)
	}
	if got := u["KillSignal"]; len(got) != 1 || got[0] != "SIGTERM" {
		t.Fatalf("%s: KillSignal=%v, this test sends SIGTERM", unitFile, got)
	}
	bin := buildConnscope(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o750); err != nil {
		t.Fatal(err)
	}
	// The example configuration as it is, but at probability 1 so that
	// every test connection is sampled.
	example, err := agent.LoadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	probability := regexp.MustCompile(`(?m)^probability: .*$`)
	if n := len(probability.FindAll(data, -1)); n != 1 {
		t.Fatalf("%s: %d lines 'probability: ...', want 1", configFile, n)
	}
	config := filepath.Join(dir, configFile)
	if err := os.WriteFile(config, probability.ReplaceAll(data, []byte("probability: 1")), 0o644); err != nil {
		t.Fatal(err)
	}
	if len(example.Ports) < 2 {
		t.Fatalf("%s: the test wants two sampled ports, one with a listener and one without: %v", configFile, example.Ports)
	}
	open, closed := strconv.Itoa(example.Ports[0]), strconv.Itoa(example.Ports[1])
	sandbox := []string{"setpriv", "--bounding-set", bounding, "--no-new-privs", "--"}
	start := append(sandbox, u.command(t, "ExecStart", bin, config, state)...)
	stopPost := append(sandbox, u.command(t, "ExecStopPost", bin, config, state)...)
	httpAddr := ""
	for i, a := range start {
		if a == "--http-addr" && i+1 < len(start) {
			httpAddr = start[i+1]
		}
	}
	if httpAddr == "" {
		t.Fatalf("%s: ExecStart gives no --http-addr", unitFile)
	}

	client, server := netnstest.New(t, "sd-client"), netnstest.New(t, "sd-server")
	client.Must(t, "ip", "link", "add", "cs-c0", "type", "veth", "peer", "name", "cs-s0", "netns", server.Name())
	client.Must(t, "ip", "addr", "add", "10.233.9.1/24", "dev", "cs-c0")
	server.Must(t, "ip", "addr", "add", "10.233.9.2/24", "dev", "cs-s0")
	client.Must(t, "ip", "link", "set", "cs-c0", "up")
	server.Must(t, "ip", "link", "set", "cs-s0", "up")
	server.Must(t, "ip", "link", "set", "lo", "up")
	server.Listen(t, "tcp", "10.233.9.2:"+open, func(c net.Conn) {
		buf := make([]byte, 512)
		if _, err := c.Read(buf); err == nil {
			c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nok\n"))
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		netnstest.Discard(c)
	})

	p := server.Start(t, dir, "connscope", start...)
	p.WaitOutput(t, "rules installed", 30*time.Second)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%016x", mask)
	for _, field := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got := statusField(string(status), field); got != want {
			t.Errorf("%s %s, want %s (the unit's bounding set)", field, got, want)
		}
	}
	if got := statusField(string(status), "NoNewPrivs"); got != "1" {
		t.Errorf("NoNewPrivs %s, want 1", got)
	}
	if n := ruleCount(t, server); n == 0 {
		t.Fatalf("no connscope rule installed:\n%s", p.Output())
	}
	// It listens on the HTTP address and, for its agent's gRPC, on
	// loopback only: nothing else (no agent metrics port of its own).
	ss := server.Must(t, "ss", "-Hltnp")
	for _, l := range strings.Split(strings.TrimSpace(ss), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !strings.Contains(l, fmt.Sprintf("pid=%d,", p.Pid())) {
			continue
		}
		if local := f[3]; local != httpAddr && !strings.HasPrefix(local, "127.0.0.1:") {
			t.Errorf("listens on %s, beyond %s and loopback:\n%s", local, httpAddr, ss)
		}
	}

	// post_ack: handshake, then abort; post_psh: a request, then abort;
	// post_syn: a SYN to the sampled port without a listener.
	if err := client.EndEarly("10.233.9.2:"+open, "10.233.9.2:"+closed, 3); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := summary(t, server, httpAddr, p)
		if nonZero(got["post_syn"]) && nonZero(got["post_ack"]) && nonZero(got["post_psh"]) {
			t.Logf("summary: %v", got)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("summary %v lacks post_syn, post_ack or post_psh; log:\n%s", got, p.Output())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(state, "connscope.db")); err != nil {
		t.Errorf("the store is not in the state directory: %v", err)
	}

	syscall.Kill(p.Pid(), syscall.SIGTERM)
	if code := p.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exited %d after SIGTERM:\n%s", code, p.Output())
	}
	if n := ruleCount(t, server); n != 0 {
		t.Fatalf("%d connscope rules left after SIGTERM:\n%s", n, p.Output())
	}

	// A crash: the rules stay until ExecStopPost.
	p = server.Start(t, dir, "connscope-killed", start...)
	p.WaitOutput(t, "rules installed", 30*time.Second)
	syscall.Kill(p.Pid(), syscall.SIGKILL)
	p.Wait(t, 30*time.Second)
	if n := ruleCount(t, server); n == 0 {
		t.Fatal("no rule left after SIGKILL: nothing for ExecStopPost to do, so this checks nothing")
	}
	out, err := server.Run(time.Minute, stopPost...)
	if err != nil {
		t.Fatalf("ExecStopPost: %v", err)
	}
	if n := ruleCount(t, server); n != 0 {
		t.Fatalf("%d connscope rules left after ExecStopPost:\n%s", n, out)
	}
	t.Logf("ExecStopPost after SIGKILL:\n%s", out)
	// Run again on a clean host: nothing to do, exit 0.
	if out, err := server.Run(time.Minute, stopPost...); err != nil {
		t.Fatalf("ExecStopPost with nothing to remove: %v\n%s", err, out)
	}
}

// statusField returns a field of /proc/PID/status.
func statusField(status, name string) string {
	for _, l := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func summary(t *testing.T, ns *netnstest.NS, addr string, p *netnstest.Proc) map[string]string {
	t.Helper()
	got, err := ns.RadarSummary(addr)
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, p.Output())
	}
	return got
}

func nonZero(share string) bool {
	f, err := strconv.ParseFloat(share, 64)
	return err == nil && f > 0
}

// ruleCount counts the lines naming connscope in both backends' rule sets
// of ns, both families.
func ruleCount(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	n := 0
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := ns.Run(time.Minute, prog, "-t", "mangle")
		if err != nil {
			continue
		}
		n += strings.Count(strings.ToLower(out), "connscope")
	}
	return n
}
