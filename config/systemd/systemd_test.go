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

// args returns the unit's only KEY= command line as arguments. The unit
// quotes nothing, so splitting at spaces is what systemd does with it.
func (u unit) args(t *testing.T, key string) []string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("%s: want one %s=, have %d", unitFile, key, len(u[key]))
	}
	if strings.ContainsAny(u[key][0], `"'\$%`) {
		t.Fatalf("%s: %s=%s: quoting, escapes or specifiers: split it as systemd does", unitFile, key, u[key][0])
	}
	return strings.Fields(u[key][0])
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
				t.Fatalf("%s: CapabilityBoundingSet has %s; this test knows only %v", unitFile, c, bits)
			}
			mask |= 1 << b
		}
	}
	if mask == 0 {
		t.Fatalf("%s: no CapabilityBoundingSet", unitFile)
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
	if !reflect.DeepEqual(c.Ports, []int{80, 443}) {
		t.Errorf("%s: ports %v: testdata/check.sh connects to 80 and 443", configFile, c.Ports)
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

func nonZero(share string) bool {
	f, err := strconv.ParseFloat(share, 64)
	return err == nil && f > 0
}

// TestUnitUnderSystemd boots systemd as PID 1 in a systemd-nspawn
// container of this machine's own /usr (--volatile=yes: a tmpfs root, an
// empty /etc but for what the test binds, a network namespace of its own
// with loopback only), with the unit, the example settings at
// probability 1 and a freshly built binary at the unit's paths, into a
// target that starts connscope.service and testdata/check.sh. So the whole
// sandbox of the unit applies: capability bounding set, NoNewPrivileges,
// the system call filter, ProtectSystem and the rest. check.sh makes real
// connections on the container's loopback and writes what it sees to a
// directory the test reads: the process's status and mounts, the rules,
// the Radar summary, and the journal after systemctl stop and after a
// SIGKILL (ExecStopPost). The container is the test's own and is gone
// when it powers off; the test kills it if it overstays.
func TestUnitUnderSystemd(t *testing.T) {
	netnstest.NeedRoot(t, "systemd-nspawn")
	netnstest.NeedTools(t, "apt-get install systemd-container", "systemd-nspawn")
	u := readUnit(t)
	mask := u.boundingSet(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	out := filepath.Join(dir, "out")
	for _, d := range []string{bin, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	built := buildConnscope(t)
	if err := os.Rename(built, filepath.Join(bin, "connscope")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, configFile)
	probability := regexp.MustCompile(`(?m)^probability: .*$`)
	if err := os.WriteFile(config, probability.ReplaceAll(data, []byte("probability: 1")), 0o644); err != nil {
		t.Fatal(err)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	name := fmt.Sprintf("cs-unit-%d", os.Getpid())
	args := []string{"systemd-nspawn", "--quiet", "-D", "/", "--volatile=yes", "--private-network",
		"--register=no", "--keep-unit", "-M", name,
		"--bind-ro=" + bin + ":" + filepath.Dir(installedBinary),
		"--bind-ro=" + abs(unitFile) + ":/etc/systemd/system/connscope.service",
		"--bind-ro=" + config + ":" + installedConfig,
		"--bind-ro=" + abs("testdata/connscope-test.target") + ":/etc/systemd/system/connscope-test.target",
		"--bind-ro=" + abs("testdata/connscope-check.service") + ":/etc/systemd/system/connscope-check.service",
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
		t.Fatalf("connscope.service is not running: %s\njournal:\n%s", show, tail(read("journal-started.txt"), 30))
	}
	status := read("status.txt")
	want := fmt.Sprintf("%016x", mask)
	for _, field := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got := statusField(status, field); got != want {
			t.Errorf("%s %s, want %s (the unit's bounding set)", field, got, want)
		}
	}
	for field, want := range map[string]string{"NoNewPrivs": "1", "Seccomp": "2"} {
		if got := statusField(status, field); got != want {
			t.Errorf("%s %s, want %s", field, got, want)
		}
	}
	mounts := mountOptions(read("mountinfo.txt"))
	for path, want := range map[string]string{"/": "ro", "/usr": "ro", "/etc": "ro", "/run": "rw", stateDirectory: "rw"} {
		if got := mounts.optionAt(path); got != want {
			t.Errorf("%s is mounted %q for the service, want %s (mounts: %v)", path, got, want, mounts)
		}
	}
	// It listens on its HTTP address and, for its agent's gRPC, on
	// loopback: nothing else (no agent metrics port of its own).
	pid := ""
	for _, l := range strings.Split(read("show.txt"), "\n") {
		if v, ok := strings.CutPrefix(l, "MainPID="); ok {
			pid = v
		}
	}
	httpAddr := ""
	start := u.args(t, "ExecStart")
	for i, a := range start {
		if v, ok := strings.CutPrefix(a, "--http-addr="); ok {
			httpAddr = v
		} else if a == "--http-addr" && i+1 < len(start) {
			httpAddr = start[i+1]
		}
	}
	listeners := read("listeners.txt")
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(listeners), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && strings.Contains(l, "pid="+pid+",") {
			n++
			if f[3] != httpAddr && !strings.HasPrefix(f[3], "127.0.0.1:") {
				t.Errorf("connscope listens on %s, beyond %s and loopback:\n%s", f[3], httpAddr, listeners)
			}
		}
	}
	if n == 0 || httpAddr == "" {
		t.Errorf("no listener of connscope (pid %s, HTTP address %q) in:\n%s", pid, httpAddr, listeners)
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
