package scenarios

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireTools skips the test, naming what is missing, when a tool of the
// scenarios, or one of extra, is not installed (hack/setup-scenarios.sh
// installs them all). It returns the python3 to use: Debian's, which has
// scapy (a python3 earlier in PATH, e.g. pyenv's, may not).
func requireTools(t *testing.T, extra ...string) string {
	t.Helper()
	var missing []string
	tools := []string{"ip", "iptables", "ip6tables", "ethtool", "sysctl", "tcpdump", "tshark", "curl", "openssl", "hping3", "zmap", "nmap", "masscan"}
	for _, tool := range append(tools, extra...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		python = "python3"
	}
	if out, err := exec.Command(python, "-c", "import scapy.all").CombinedOutput(); err != nil {
		missing = append(missing, fmt.Sprintf("python3-scapy (%s: %s)", python, strings.TrimSpace(string(out))))
	}
	if len(missing) > 0 {
		t.Skipf("scenario tools missing: %s; install them with hack/setup-scenarios.sh", strings.Join(missing, ", "))
	}
	return python
}

// buildCLI starts building cmd/connscope into a temporary folder and returns a
// function that waits for the build and returns the binary's path (failing
// the test if the build failed).
func buildCLI(t *testing.T) func() string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "connscope")
	done := make(chan error, 1)
	go func() {
		root, err := moduleRoot()
		if err != nil {
			done <- err
			return
		}
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/connscope")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			done <- fmt.Errorf("go build -o %s ./cmd/connscope: %w\n%s", bin, err, out)
			return
		}
		done <- nil
	}()
	return func() string {
		t.Helper()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		done <- nil // a later call returns at once
		return bin
	}
}

// moduleRoot returns the folder holding go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not in a module")
	}
	return filepath.Dir(gomod), nil
}

// conn is one line of `connscope classify --format json`.
type conn struct {
	SrcIP     string          `json:"src_ip"`
	SrcPort   int             `json:"src_port"`
	DstIP     string          `json:"dst_ip"`
	DstPort   int             `json:"dst_port"`
	IPVersion int             `json:"ip_version"`
	FirstSeen json.RawMessage `json:"first_seen"`
	LastSeen  json.RawMessage `json:"last_seen"`
	Packets   int             `json:"packets"`
	Stage     string          `json:"stage"`
	Tags      []string        `json:"tags"`
	Signature string          `json:"signature"`
	Excluded  string          `json:"excluded"`
}

// key names the connection by its 4-tuple.
func (c conn) key() string {
	return fmt.Sprintf("%s:%d > %s:%d", c.SrcIP, c.SrcPort, c.DstIP, c.DstPort)
}

// classify runs `connscope classify --format json FLAGS CAPTURES...` and
// decodes its JSON Lines; every line must have exactly the documented keys.
func classify(t *testing.T, bin string, captures []string, flags ...string) []conn {
	t.Helper()
	args := append(append([]string{"classify", "--format", "json"}, flags...), captures...)
	cmd := exec.Command(bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, stderr.String())
	}
	var conns []conn
	for i, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		var c conn
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("classify %s: line %d: %v\n%s", strings.Join(captures, " "), i+1, err, line)
		}
		conns = append(conns, c)
	}
	return conns
}

// routerRules are the router's iptables filter rules (the same for iptables
// and ip6tables) that make the scenarios' middleboxes. Connection marks:
// 1 drops the flow from the marking packet on, 2 from the packet after it.
func routerRules(ss []*scenario) [][]string {
	rules := [][]string{{"-A", "FORWARD", "-m", "connmark", "--mark", "2", "-j", "DROP"}}
	for _, s := range ss {
		port := strconv.Itoa(s.port)
		switch s.router {
		case routerPassFirstData:
			rules = append(rules, []string{"-A", "FORWARD", "-p", "tcp", "--dport", port,
				"-m", "string", "--algo", "bm", "--string", "GET ", "-j", "CONNMARK", "--set-mark", "2"})
		case routerDropFrom:
			rules = append(rules, []string{"-A", "FORWARD", "-p", "tcp", "--dport", port,
				"-m", "string", "--algo", "bm", "--string", s.dropString, "-j", "CONNMARK", "--set-mark", "1"})
		case routerDropSYNACK:
			rules = append(rules, []string{"-A", "FORWARD", "-p", "tcp", "--sport", port,
				"--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"})
		}
	}
	return append(rules, []string{"-A", "FORWARD", "-m", "connmark", "--mark", "1", "-j", "DROP"})
}

// seedRules are the seed's two mangle PREROUTING rules, sampling every new
// connection (probability 1) and logging the first 10 client packets of
// each, headers only (128 bytes), to NFLOG group nflogGroup.
//
// --nflog-threshold 1 makes the kernel send each packet at once. Without it
// nfnetlink_log batches packets (up to 100, or 1 s): they reach the reader
// late, with one timestamp per batch, and tshark lost the end of the
// capture at stop in our runs.
func seedRules() [][]string {
	label := strconv.Itoa(labelBit)
	return [][]string{
		{"-A", "PREROUTING", "-p", "tcp", "--syn", "-m", "state", "--state", "NEW",
			"-m", "statistic", "--mode", "random", "--probability", "1.0",
			"-m", "connlabel", "--label", label, "--set",
			"-m", "comment", "--comment", "connscope scenario: label a sample of ingress TCP connections"},
		{"-A", "PREROUTING", "-m", "connlabel", "--label", label,
			"-m", "connbytes", "!", "--connbytes", "11", "--connbytes-dir", "original", "--connbytes-mode", "packets",
			"-j", "NFLOG", "--nflog-group", strconv.Itoa(nflogGroup), "--nflog-size", "128", "--nflog-threshold", "1",
			"-m", "comment", "--comment", "connscope scenario: log the first 10 packets of sampled connections"},
	}
}

// injectorConfig writes hack/scenarios/injector.py's configuration for the
// scenarios that inject resets, and returns its path.
func (l *lab) injectorConfig(ss []*scenario) string {
	l.t.Helper()
	ports := map[string]any{}
	for _, s := range ss {
		if len(s.inject) == 0 {
			continue
		}
		var resets [][]any
		for _, r := range s.inject {
			resets = append(resets, []any{r.Flags, r.Ack})
		}
		ports[strconv.Itoa(s.port)] = map[string]any{"seq": s.injectSeq, "resets": resets}
	}
	cfg := map[string]any{
		"sniff": routerClientIf, "send": routerServerIf,
		"src_mac": routerServerMAC, "dst_mac": serverMAC,
		"ttl": injectTTL, "ports": ports,
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		l.t.Fatal(err)
	}
	path := filepath.Join(l.dir, "injector.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// selfSignedCert makes a throwaway EC certificate for the HTTPS server.
func (l *lab) selfSignedCert() (cert, key string) {
	l.t.Helper()
	cert, key = filepath.Join(l.dir, "cert.pem"), filepath.Join(l.dir, "key.pem")
	if _, err := l.run(30*time.Second, nil, "openssl", "req", "-x509", "-newkey", "ec",
		"-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
		"-subj", "/CN=connscope-scenario", "-keyout", key, "-out", cert); err != nil {
		l.t.Fatal(err)
	}
	return cert, key
}
