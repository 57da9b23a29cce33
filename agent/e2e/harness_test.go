package e2e

// The harness: the agent binary, namespaces, processes, sockets inside
// namespaces, the rule-set snapshot and its golden files, and readers of
// what the agent wrote.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/internal/golden"
	"github.com/connscope/connscope/internal/netnstest"
	"github.com/connscope/connscope/packet"
)

// connscopeBin is the connscope binary TestMain builds.
var connscopeBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if !netnstest.Enabled() {
		os.Exit(m.Run()) // every test skips, saying why
	}
	dir, err := os.MkdirTemp("", "connscope-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	connscopeBin = filepath.Join(dir, "connscope")
	if err := buildConnscope(connscopeBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	before := hostConnscopeRules()
	code := m.Run()
	if after := hostConnscopeRules(); after != before {
		fmt.Fprintf(os.Stderr, "FAIL: the machine's own connscope rules changed during the tests:\nbefore:\n%s\nafter:\n%s\n", before, after)
		code = 1
	}
	if left := leftoverNamespaces(); left != "" {
		fmt.Fprintf(os.Stderr, "FAIL: namespaces of this run were not removed: %s\n", left)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildConnscope builds ./cmd/connscope of this module into bin.
func buildConnscope(bin string) error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return errors.New("go env GOMOD: not in a module")
	}
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/connscope")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -o %s ./cmd/connscope: %w\n%s", bin, err, out)
	}
	return nil
}

// hostConnscopeRules reads (iptables-save without -t, which creates
// nothing) the lines that mention connscope in the machine's own tables.
func hostConnscopeRules() string {
	var b strings.Builder
	for _, prog := range savePrograms {
		out, err := exec.Command(prog.name).Output()
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", prog.name, err)
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(l), "connscope") {
				fmt.Fprintf(&b, "%s: %s\n", prog.name, l)
			}
		}
	}
	return b.String()
}

var (
	madeMu sync.Mutex
	made   []string // namespaces this run created
)

func leftoverNamespaces() string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var left []string
	madeMu.Lock()
	defer madeMu.Unlock()
	for _, ns := range made {
		if regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ns) + `\b`).Match(out) {
			left = append(left, ns)
		}
	}
	return strings.Join(left, ", ")
}

// needRoot skips the test unless it runs as root with the tools the
// harness needs, and CONNSCOPE_SKIP_ROOT_TESTS is not 1.
func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	netnstest.NeedRoot(t, "network namespaces, iptables, NFLOG")
	need := []string{"iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"}
	for _, p := range savePrograms {
		need = append(need, p.name)
	}
	netnstest.NeedTools(t, "hack/setup-scenarios.sh installs the tools", append(need, tools...)...)
}

// netns is a network namespace made by one test.
type netns struct {
	*netnstest.NS
	t *testing.T
}

// newNS makes a namespace cs-agent-<role>-<random> (role may be "") with
// its loopback up, and deletes it when the test ends, after the processes
// started in it are gone (cleanups run last-registered first).
func newNS(t *testing.T, role string) *netns {
	t.Helper()
	prefix := "agent"
	if role != "" {
		prefix += "-" + role
	}
	ns := &netns{NS: netnstest.New(t, prefix), t: t}
	madeMu.Lock()
	made = append(made, ns.Name())
	madeMu.Unlock()
	return ns
}

// dialer returns a DialContext that connects from inside the namespace.
func (ns *netns) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// httpGet fetches a URL from inside the namespace.
func (ns *netns) httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: ns.dialer(), DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// proc is a background process started in a namespace.
type proc struct {
	*netnstest.Proc
	t *testing.T
}

// start starts args in the namespace in a process group of its own; the
// test's cleanup kills it by PID (its group) if it still runs, and then
// logs its output if the test failed.
func (ns *netns) start(name string, args ...string) *proc {
	ns.t.Helper()
	var p *proc
	ns.t.Cleanup(func() { // after the process is gone: registered before it started
		if p != nil && ns.t.Failed() {
			ns.t.Logf("output of %s:\n%s", p.Name, p.Output())
		}
	})
	p = &proc{Proc: ns.Start(ns.t, ns.t.TempDir(), name, args...), t: ns.t}
	return p
}

// signal sends sig to the process (by PID) and waits for it to exit
// within timeout; it returns the exit code.
func (p *proc) signal(sig syscall.Signal, timeout time.Duration) int {
	p.t.Helper()
	if err := syscall.Kill(p.Pid(), sig); err != nil && p.Running() {
		p.t.Fatalf("signal %s: %v", p.Name, err)
	}
	return p.Wait(p.t, timeout)
}

// agentProc is a `connscope agent` running in a namespace.
type agentProc struct {
	*proc
	ns      *netns
	metrics string // http://host:port of its metrics server
}

// refusedAgent runs an agent that must refuse to start: the test fails
// if it exits 0. It returns the agent's output.
func (ns *netns) refusedAgent(name string, args ...string) string {
	ns.t.Helper()
	p := ns.startAgent(name, args...)
	if code := p.Wait(ns.t, stopTimeout); code == 0 {
		ns.t.Fatalf("%s exited 0, want it to refuse to start:\n%s", name, p.Output())
	}
	return p.Output()
}

// startAgent runs `connscope agent args...` in the namespace. The
// metrics address is taken from args (--metrics-addr), else the default.
func (ns *netns) startAgent(name string, args ...string) *agentProc {
	ns.t.Helper()
	addr := "127.0.0.1:9477"
	for i, a := range args {
		if a == "--metrics-addr" && i+1 < len(args) {
			addr = args[i+1]
		}
	}
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	return &agentProc{
		proc:    ns.start(name, append([]string{connscopeBin, "agent"}, args...)...),
		ns:      ns,
		metrics: "http://" + addr,
	}
}

// waitReady polls /readyz until it answers 200.
func (a *agentProc) waitReady(timeout time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		code, body, err := a.ns.httpGet(a.metrics + "/readyz")
		if err == nil && code == http.StatusOK {
			return
		}
		last = fmt.Sprintf("%d %s %v", code, strings.TrimSpace(body), err)
		if !a.Running() {
			a.t.Fatalf("%s exited (%v) before it was ready:\n%s", a.Name, a.Err(), a.Output())
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s not ready within %v (last /readyz: %s):\n%s", a.Name, timeout, last, a.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrape reads /metrics into a map from "name{labels}" to value.
func (a *agentProc) scrape() map[string]float64 {
	a.t.Helper()
	code, body, err := a.ns.httpGet(a.metrics + "/metrics")
	if err != nil || code != http.StatusOK {
		a.t.Fatalf("GET /metrics: %d %v", code, err)
	}
	m := map[string]float64{}
	for _, l := range strings.Split(body, "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			a.t.Fatalf("metrics line %q: %v", l, err)
		}
		m[l[:i]] = v
	}
	return m
}

// eventually polls cond every 100 ms until it holds, and fails the test
// after timeout with what describe says then.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; %s", what, timeout, describe())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// savePrograms are read, in this order, to snapshot a namespace's rules.
var savePrograms = []struct{ name, family string }{
	{"iptables-nft-save", "IPv4"},
	{"ip6tables-nft-save", "IPv6"},
	{"iptables-legacy-save", "IPv4"},
	{"ip6tables-legacy-save", "IPv6"},
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// rules is the mangle table of both backends and both families in the
// namespace, as iptables-save prints it without comments and with
// counters zeroed. Legacy is read without -t, which creates no table; a
// backend without a mangle table shows "(no mangle table)".
func (ns *netns) rules() string {
	ns.t.Helper()
	var b strings.Builder
	for _, p := range savePrograms {
		args := []string{p.name}
		if strings.Contains(p.name, "-nft") {
			args = append(args, "-t", "mangle")
		}
		out := ns.Must(ns.t, args...)
		fmt.Fprintf(&b, "== %s (%s)\n", strings.TrimSuffix(p.name, "-save"), p.family)
		in, found := false, false
		for _, l := range strings.Split(out, "\n") {
			switch {
			case strings.HasPrefix(l, "#"), strings.HasPrefix(l, "Warning:"):
			case l == "*mangle":
				in, found = true, true
				b.WriteString(l + "\n")
			case strings.HasPrefix(l, "*"):
				in = false
			case in:
				b.WriteString(counters.ReplaceAllString(l, "[0:0]") + "\n")
				if l == "COMMIT" {
					in = false
				}
			}
		}
		if !found {
			b.WriteString("(no mangle table)\n")
		}
	}
	return b.String()
}

// eventuallyRules polls the rule set until it equals the golden file.
func (ns *netns) eventuallyRules(timeout time.Duration, name string) {
	ns.t.Helper()
	want, err := os.ReadFile(golden.Path(name))
	if err != nil {
		ns.t.Fatal(err)
	}
	var got string
	eventually(ns.t, timeout, "rule set "+name, func() bool {
		got = ns.rules()
		return got == string(want)
	}, func() string { return "last seen:\n" + got + "want:\n" + string(want) })
}

// records reads a capture file (pcap or pcapng) into records, and
// returns its frames' captured bytes too.
func records(t *testing.T, path string) ([]packet.Record, [][]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := capture.NewReader(bufio.NewReader(f), path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []packet.Record
	var frames [][]byte
	for {
		ts, _, data, err := r.NextFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		frames = append(frames, append([]byte(nil), data...))
		var rec packet.Record
		if err := packet.Decode(data, ts, &rec); err != nil {
			t.Fatalf("%s: frame %d: %v", path, len(frames), err)
		}
		recs = append(recs, rec)
	}
	return recs, frames
}

// connKey names a connection by its client's address and port.
type connKey struct {
	client string
	port   uint16
}

// byConnection groups records sent to server port dport by connection.
func byConnection(recs []packet.Record, dport uint16) map[connKey][]packet.Record {
	out := map[connKey][]packet.Record{}
	for _, r := range recs {
		if r.DstPort != dport {
			continue
		}
		k := connKey{r.Src().String(), r.SrcPort}
		out[k] = append(out[k], r)
	}
	return out
}

// classified is one line of `connscope classify --format json`.
type classified struct {
	SrcIP     string   `json:"src_ip"`
	SrcPort   int      `json:"src_port"`
	DstIP     string   `json:"dst_ip"`
	DstPort   int      `json:"dst_port"`
	IPVersion int      `json:"ip_version"`
	Packets   int      `json:"packets"`
	Stage     string   `json:"stage"`
	Tags      []string `json:"tags"`
	Signature string   `json:"signature"`
	Excluded  string   `json:"excluded"`
}

// verdict is what two classifications of one connection must share.
func (c classified) verdict() string {
	return fmt.Sprintf("packets=%d stage=%q tags=%v signature=%q excluded=%q", c.Packets, c.Stage, c.Tags, c.Signature, c.Excluded)
}

// classify runs `connscope classify --format json flags... file` and
// returns the connections to server port dport by client address and port.
func classify(t *testing.T, file string, dport int, flags ...string) map[connKey]classified {
	t.Helper()
	args := append(append([]string{"classify", "--format", "json"}, flags...), file)
	cmd := exec.Command(connscopeBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("connscope %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	res := map[connKey]classified{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		var c classified
		if err := json.Unmarshal([]byte(l), &c); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if c.DstPort == dport {
			res[connKey{c.SrcIP, uint16(c.SrcPort)}] = c
		}
	}
	return res
}

// server is a TCP server in a namespace: for each connection it reads up
// to a newline (or a full HTTP request head), answers, and closes.
type server struct {
	ln   net.Listener
	port uint16
}

// serve listens on addr ("127.0.0.1:0", "[::]:8080", ...) inside the
// namespace until the test ends.
func (ns *netns) serve(addr string) *server {
	ns.t.Helper()
	ln := ns.Listen(ns.t, "tcp", addr, answer)
	return &server{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
}

// answer reads up to a newline (or a full HTTP request head) and answers;
// the listener closes the connection after.
func answer(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	if strings.HasPrefix(line, "GET ") {
		for {
			l, err := r.ReadString('\n')
			if err != nil || l == "\r\n" {
				break
			}
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
		return
	}
	_, _ = io.WriteString(c, "ok\n")
}

// talk makes one connection from inside the namespace to addr: it sends a
// line and reads the answer to the end, then closes (a FIN). It returns
// the client's port.
func (ns *netns) talk(addr string) uint16 {
	ns.t.Helper()
	c := ns.dial(addr)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		ns.t.Fatal(err)
	}
	if _, err := io.ReadAll(c); err != nil {
		ns.t.Fatal(err)
	}
	return uint16(c.LocalAddr().(*net.TCPAddr).Port)
}

// abort makes one connection and aborts it at once with SO_LINGER 0 (the
// kernel sends RST+ACK); it returns the client's port.
func (ns *netns) abort(addr string) uint16 {
	ns.t.Helper()
	c := ns.dial(addr)
	port := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	if err := c.SetLinger(0); err != nil {
		ns.t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		ns.t.Fatal(err)
	}
	return port
}

func (ns *netns) dial(addr string) *net.TCPConn {
	ns.t.Helper()
	c, err := ns.dialer()(context.Background(), "tcp", addr)
	if err != nil {
		ns.t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// rssBytes is the resident memory of a process, from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
