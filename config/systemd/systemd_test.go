package systemd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/agent"
	"github.com/connscope/connscope/internal/hosttest"
	"github.com/connscope/connscope/internal/netnstest"
)

// installedBinary is where the units run connscope from.
const installedBinary = "/usr/local/bin/connscope"

// aUnit is one of the units and what the tests need to know of it.
type aUnit struct {
	file   string // the unit file, here and in /etc/systemd/system
	config string // its example settings, here
	// installedConfig is where the unit reads config.
	installedConfig string
	// writable are the paths the service must see writable besides /run.
	writable []string
	// listens says whether the service may listen on addr.
	listens func(addr string) bool
}

var (
	standaloneUnit = aUnit{
		file: "connscope.service", config: "standalone.yaml", installedConfig: "/etc/connscope/standalone.yaml",
		writable: []string{"/var/lib/connscope"},
		// its HTTP API on 127.0.0.1:8080, its agent's gRPC to its
		// classifier on another loopback port
		listens: func(addr string) bool { return strings.HasPrefix(addr, "127.0.0.1:") },
	}
	agentUnit = aUnit{
		file: "connscope-agent.service", config: "agent.yaml", installedConfig: "/etc/connscope/agent.yaml",
		listens: func(addr string) bool { return addr == "127.0.0.1:9477" }, // its metrics
	}
	units = []aUnit{standaloneUnit, agentUnit}
)

// unit is the [Service] section of a unit file: each key's values in the
// order given.
type unit map[string][]string

func readUnit(t *testing.T, unitFile string) unit {
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

// boundingSet returns the capability mask of the unit's
// CapabilityBoundingSet.
func (u unit) boundingSet(t *testing.T) uint64 {
	t.Helper()
	bits := map[string]uint{"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
	mask := uint64(0)
	for _, v := range u["CapabilityBoundingSet"] {
		for _, c := range strings.Fields(v) {
			b, ok := bits[c]
			if !ok {
				t.Fatalf("CapabilityBoundingSet has %s; this test knows only %v", c, bits)
			}
			mask |= 1 << b
		}
	}
	if mask == 0 {
		t.Fatal("no CapabilityBoundingSet")
	}
	return mask
}

func buildConnscope(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "connscope")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/connscope/connscope/cmd/connscope").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestUnitsVerify runs `systemd-analyze verify` on each unit, with the
// binary it names replaced by a freshly built one (verify checks that
// ExecStart's program exists and is executable).
func TestUnitsVerify(t *testing.T) {
	netnstest.NeedTools(t, "apt-get install systemd", "systemd-analyze")
	bin := buildConnscope(t)
	for _, u := range units {
		text, err := os.ReadFile(u.file)
		if err != nil {
			t.Fatal(err)
		}
		copied := filepath.Join(t.TempDir(), u.file)
		if err := os.WriteFile(copied, []byte(strings.ReplaceAll(string(text), installedBinary, bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", copied).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u.file, err, out)
		}
	}
}

// TestUnitsExposureIsLow asks systemd-analyze for each unit's security
// exposure (offline, from the file): at most 3.0 of 10, systemd's "OK".
// What remains is what the agent needs: root for iptables, the host's
// network, CAP_NET_ADMIN and CAP_NET_RAW, netlink and IP sockets.
func TestUnitsExposureIsLow(t *testing.T) {
	netnstest.NeedTools(t, "apt-get install systemd", "systemd-analyze")
	for _, u := range units {
		out, err := exec.Command("systemd-analyze", "security", "--offline=yes", "--threshold=30", "--no-pager", u.file).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze security %s: %v (exposure above 3.0?)\n%s", u.file, err, out)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Log(lines[len(lines)-1])
	}
}

// TestExampleConfigsAreValid reads each example file with the agent's own
// configuration reader and checks it as its command does (standalone with
// the stand-in sink it checks with).
func TestExampleConfigsAreValid(t *testing.T) {
	for _, u := range units {
		c, err := agent.LoadFile(u.config)
		if err != nil {
			t.Fatal(err)
		}
		switch u.config {
		case standaloneUnit.config:
			if c.Sink != "" {
				t.Errorf("%s: sink %q: standalone ships to its own classifier", u.config, c.Sink)
			}
			c.Sink = "grpc://127.0.0.1:1"
		case agentUnit.config:
			if !strings.HasPrefix(c.Sink, "grpcs://") || c.SinkTokenFile == "" {
				t.Errorf("%s: sink %q, token file %q: the example ships over TLS with a token", u.config, c.Sink, c.SinkTokenFile)
			}
		}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", u.config, err)
		}
		if !reflect.DeepEqual(c.Ports, []int{80, 443}) {
			t.Errorf("%s: ports %v: testdata/check.sh connects to 80 and 443", u.config, c.Ports)
		}
	}
}

func nonZero(share string) bool {
	f, err := strconv.ParseFloat(share, 64)
	return err == nil && f > 0
}

// TestStandaloneUnitUnderSystemd runs connscope.service under systemd
// (underSystemd): connscope standalone, its own classifier's Radar API on
// 127.0.0.1:8080.
func TestStandaloneUnitUnderSystemd(t *testing.T) {
	underSystemd(t, standaloneUnit, "127.0.0.1:8080", func(settings []byte) []byte { return settings })
}

// TestAgentUnitUnderSystemd runs connscope-agent.service under systemd
// (underSystemd), shipping to a classifier that the container runs as a
// test unit (testdata/connscope-test-classifier.service: gRPC on
// 127.0.0.1:9443 with the ingest token, the Radar API on 127.0.0.1:8080).
// The example settings ship over grpcs:// with a CA; the test's copy
// ships over grpc:// to the test classifier, with the token file where
// the example names it.
func TestAgentUnitUnderSystemd(t *testing.T) {
	underSystemd(t, agentUnit, "127.0.0.1:8080", func(settings []byte) []byte {
		sink := regexp.MustCompile(`(?m)^sink: .*$`)
		ca := regexp.MustCompile(`(?m)^sinkCAFile: .*\n`)
		if len(sink.FindAll(settings, -1)) != 1 || len(ca.FindAll(settings, -1)) != 1 {
			t.Fatalf("%s: want one sink and one sinkCAFile line", agentUnit.config)
		}
		return ca.ReplaceAll(sink.ReplaceAll(settings, []byte("sink: grpc://127.0.0.1:9443")), nil)
	})
}

// underSystemd boots systemd as PID 1 in a systemd-nspawn container of
// this machine's own /usr (--volatile=yes: a tmpfs root, an empty /etc but
// for what the test binds, a network namespace of its own with loopback
// only), with the unit u, its example settings at probability 1 (and
// edited by edit) and a freshly built binary at the unit's paths, into a
// target that starts the unit, the test's own units (testdata/*.service)
// and testdata/check.sh. So the whole sandbox of the unit applies:
// capability bounding set, NoNewPrivileges, the system call filter,
// ProtectSystem and the rest. check.sh makes real connections on the
// container's loopback and writes what it sees to a directory the test
// reads: the process's status, mounts and listeners, the rules, the Radar
// summary at api, and the journal after systemctl stop and after a
// SIGKILL (ExecStopPost). The container is the test's own and is gone
// when it powers off; past its deadline the test stops it.
func underSystemd(t *testing.T, u aUnit, api string, edit func([]byte) []byte) {
	netnstest.NeedRoot(t, "systemd-nspawn")
	netnstest.NeedTools(t, "apt-get install systemd-container", "systemd-nspawn")
	mask := readUnit(t, u.file).boundingSet(t)
	name := strings.TrimSuffix(u.file, ".service")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	out := filepath.Join(dir, "out")
	for _, d := range []string{bin, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(buildConnscope(t), filepath.Join(bin, "connscope")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(u.config)
	if err != nil {
		t.Fatal(err)
	}
	probability := regexp.MustCompile(`(?m)^probability: .*$`)
	if n := len(probability.FindAll(data, -1)); n != 1 {
		t.Fatalf("%s: %d lines 'probability: ...', want 1", u.config, n)
	}
	config := filepath.Join(dir, u.config)
	if err := os.WriteFile(config, edit(probability.ReplaceAll(data, []byte("probability: 1"))), 0o644); err != nil {
		t.Fatal(err)
	}
	// The ingest token, where agent.yaml names it and the test classifier
	// reads it.
	token := filepath.Join(dir, "ingest-token")
	if err := os.WriteFile(token, []byte("connscope-unit-test-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The target and the check: this unit, then check.sh NAME API.
	target := filepath.Join(dir, "connscope-test.target")
	check := filepath.Join(dir, "connscope-check.service")
	writeFile(t, target, fmt.Sprintf(`[Unit]
Description=connscope unit test: basic system, %[1]s, the test's units and the check
Requires=basic.target
After=basic.target
Wants=%[1]s connscope-test-classifier.service connscope-check.service
AllowIsolate=yes
`, u.file))
	writeFile(t, check, fmt.Sprintf(`[Unit]
Description=connscope unit test: the check
After=%[1]s

[Service]
Type=oneshot
ExecStart=/bin/sh /check.sh %[2]s %[3]s
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console
`, u.file, name, api))
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	args := []string{"systemd-nspawn", "--quiet", "-D", "/", "--volatile=yes", "--private-network",
		"--register=no", "--keep-unit", "-M", fmt.Sprintf("cs-unit-%d", os.Getpid()),
		"--bind-ro=" + bin + ":" + filepath.Dir(installedBinary),
		"--bind-ro=" + abs(u.file) + ":/etc/systemd/system/" + u.file,
		"--bind-ro=" + config + ":" + u.installedConfig,
		"--bind-ro=" + token + ":/etc/connscope/ingest-token",
		"--bind-ro=" + target + ":/etc/systemd/system/connscope-test.target",
		"--bind-ro=" + check + ":/etc/systemd/system/connscope-check.service",
		"--bind-ro=" + abs("testdata/connscope-test-classifier.service") + ":/etc/systemd/system/connscope-test-classifier.service",
		"--bind-ro=" + abs("testdata/check.sh") + ":/check.sh",
		// iptables is reached through /etc/alternatives on Debian
		"--bind-ro=/etc/alternatives", "--bind-ro=/etc/passwd", "--bind-ro=/etc/group",
		"--bind=" + out + ":/out",
		"-b", "--",
		"systemd.unit=connscope-test.target", "systemd.firstboot=off", "systemd.mask=systemd-firstboot.service",
		// The container has loopback only: network-online.target, which
		// the unit waits for, would wait for wait-online's 2-minute
		// timeout. nftables.service would load this host's ruleset file.
		"systemd.mask=systemd-networkd-wait-online.service", "systemd.mask=nftables.service",
	}
	if u.file == standaloneUnit.file {
		// it is a classifier itself
		args = append(args, "systemd.mask=connscope-test-classifier.service")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Past the deadline: SIGTERM, on which systemd-nspawn powers the
	// container off in order (a SIGKILL of nspawn alone would leave the
	// container's own PID 1 running); SIGKILL if that takes 30 s.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	console, err := cmd.CombinedOutput() // the container's console: shown when check.sh did not finish
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Errorf("check.sh wrote no %s: %v", f, err)
		}
		return string(b)
	}
	if _, serr := os.Stat(filepath.Join(out, "done")); err != nil || serr != nil {
		t.Fatalf("the container: %v; check.sh done: %v; console:\n%s", err, serr, tail(string(console), 60))
	}

	if show := read("show.txt"); !strings.Contains(show, "ActiveState=active") {
		t.Fatalf("%s is not running: %s\njournal:\n%s", u.file, show, tail(read("journal-started.txt"), 30))
	}
	hosttest.CheckConfined(t, u.file+"'s process (the unit's bounding set)", read("status.txt"), mask)
	mounts := mountOptions(read("mountinfo.txt"))
	access := map[string]string{"/": "ro", "/usr": "ro", "/etc": "ro", "/run": "rw"}
	for _, p := range u.writable {
		access[p] = "rw"
	}
	for path, want := range access {
		if got := mounts.optionAt(path); got != want {
			t.Errorf("%s is mounted %q for the service, want %s (mounts: %v)", path, got, want, mounts)
		}
	}
	// It listens where the unit means it to, nothing else.
	pid := ""
	for _, l := range strings.Split(read("show.txt"), "\n") {
		if v, ok := strings.CutPrefix(l, "MainPID="); ok {
			pid = v
		}
	}
	listeners := read("listeners.txt")
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(listeners), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && strings.Contains(l, "pid="+pid+",") {
			n++
			if !u.listens(f[3]) {
				t.Errorf("%s listens on %s:\n%s", u.file, f[3], listeners)
			}
		}
	}
	if n == 0 {
		t.Errorf("no listener of %s (pid %s) in:\n%s", u.file, pid, listeners)
	}
	if !strings.Contains(read("rules-running.txt"), "connscope policy server") {
		t.Errorf("no rule of policy server while running:\n%s", read("rules-running.txt"))
	}

	var summary struct {
		Result struct {
			Summary0 map[string]string `json:"summary_0"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(read("summary.json")), &summary); err != nil {
		t.Errorf("summary: %v", err)
	}
	if s := summary.Result.Summary0; !nonZero(s["post_syn"]) || !nonZero(s["no_match"]) {
		t.Errorf("summary %v: want post_syn (SYNs to 443) and no_match (closed with FIN)", s)
	} else {
		t.Logf("summary: %v", s)
	}

	// What check.sh saw after systemctl stop, and after a SIGKILL.
	for _, c := range []struct {
		file, text string
		want       bool
		what       string
	}{
		{"stopped.txt", "Result=success", true, "systemctl stop ends in success"},
		{"rules-stopped.txt", "connscope", false, "no rule is left after systemctl stop"},
		{"journal-stopped.txt", "rules removed", true, "the journal says the rules were removed at stop"},
		{"rules-before-kill.txt", "connscope policy server", true, "the rules are back before the SIGKILL (or the kill checks nothing)"},
		{"rules-killed.txt", "connscope", false, "no rule is left after the SIGKILL and ExecStopPost"},
		{"journal-killed.txt", "deleted chain CONNSCOPE-", true, "ExecStopPost's cleanup is in the journal after the SIGKILL"},
	} {
		if got := read(c.file); strings.Contains(got, c.text) != c.want {
			t.Errorf("want: %s; %s has:\n%s", c.what, c.file, tail(got, 20))
		}
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mounts maps a mount point to its per-mount options (mountinfo's sixth
// field), the last mount of a point winning.
type mounts map[string]string

func mountOptions(mountinfo string) mounts {
	m := mounts{}
	for _, l := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 {
			m[f[4]] = f[5]
		}
	}
	return m
}

// optionAt says whether path is on a read-only ("ro") or writable ("rw")
// mount: that of the longest mount point that contains it.
func (m mounts) optionAt(path string) string {
	best := ""
	for p := range m {
		if (p == "/" || path == p || strings.HasPrefix(path, p+"/")) && len(p) > len(best) {
			best = p
		}
	}
	if best == "" {
		return ""
	}
	for _, o := range strings.Split(m[best], ",") {
		if o == "ro" || o == "rw" {
			return o
		}
	}
	return ""
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
