package e2e

// The harness: the agent binary, namespaces, processes, sockets inside
// namespaces, the rule-set snapshot and its golden files, and readers of
// what the agent wrote.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the rule sets seen")

// connscopeBin is the connscope binary TestMain builds.
var connscopeBin string

func rootTestsEnabled() bool {
	return os.Getenv("CONNSCOPE_SKIP_ROOT_TESTS") != "1" && os.Geteuid() == 0
}

func TestMain(m *testing.M) {
	flag.Parse()
	if !rootTestsEnabled() {
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
	if os.Getenv("CONNSCOPE_SKIP_ROOT_TESTS") == "1" {
		t.Skip("CONNSCOPE_SKIP_ROOT_TESTS=1: skipping a test that needs root, network namespaces and iptables")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, iptables, NFLOG); run as root or set CONNSCOPE_SKIP_ROOT_TESTS=1")
	}
	need := []string{"ip", "nsenter", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"}
	for _, p := range savePrograms {
		need = append(need, p.name)
	}
	for _, tool := range append(need, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s in PATH (hack/setup-scenarios.sh installs the tools)", tool)
		}
	}
}

// netns is a network namespace made by one test.
type netns struct {
	t    *testing.T
	name string
}

// newNS makes a namespace cs-agent-<role>-<random> (role may be "") with
// its loopback up, and deletes it when the test ends, after the processes
// started in it are gone (cleanups run last-registered first).
func newNS(t *testing.T, role string) *netns {
	t.Helper()
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	name := "cs-agent-" + hex.EncodeToString(r[:])
	if role != "" {
		name = "cs-agent-" + role + "-" + hex.EncodeToString(r[:])
	}
	ns := &netns{t: t, name: name}
	if out, err := run(30*time.Second, "ip", "netns", "add", name); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	madeMu.Lock()
	made = append(made, name)
	madeMu.Unlock()
	t.Cleanup(func() {
		if out, err := run(30*time.Second, "ip", "netns", "del", name); err != nil {
			t.Errorf("delete namespace %s: %v: %s", name, err, out)
		}
	})
	ns.must("ip", "link", "set", "lo", "up")
	return ns
}

// run runs a command to completion within timeout; combined output.
func run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// enter prefixes args with nsenter into the namespace. nsenter execs the
// program, so its PID is the program's.
func (ns *netns) enter(args ...string) []string {
	return append([]string{"nsenter", "--net=/run/netns/" + ns.name, "--"}, args...)
}

// exec runs a program inside the namespace; combined output.
func (ns *netns) exec(args ...string) (string, error) {
	return run(60*time.Second, ns.enter(args...)...)
}

// must runs a program inside the namespace and fails the test if it fails.
func (ns *netns) must(args ...string) string {
	ns.t.Helper()
	out, err := ns.exec(args...)
	if err != nil {
		ns.t.Fatalf("[%s] %s: %v\n%s", ns.name, strings.Join(args, " "), err, out)
	}
	return out
}

// do runs fn on an OS thread switched into the namespace. Sockets fn
// creates stay in the namespace whichever thread uses them later. The
// thread is never switched back: it stays locked and the runtime ends it
// with the goroutine, so no other code ever runs in the namespace by
// accident.
func (ns *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			target, err := os.Open("/run/netns/" + ns.name)
			if err != nil {
				return err
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("setns %s: %w", ns.name, err)
			}
			return fn()
		}()
	}()
	return <-errc
}

// dialer returns a DialContext that connects from inside the namespace.
func (ns *netns) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.do(func() (err error) {
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

// proc is a background process started in a namespace, with its output
// in a file.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// start starts args in the namespace in a process group of its own; the
// test's cleanup kills it by PID (its group) if it still runs.
func (ns *netns) start(name string, args ...string) *proc {
	ns.t.Helper()
	p := &proc{t: ns.t, name: name, logPath: filepath.Join(ns.t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.logPath)
	if err != nil {
		ns.t.Fatal(err)
	}
	argv := ns.enter(args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		ns.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	ns.t.Cleanup(func() {
		if p.running() {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
		<-p.done
		if ns.t.Failed() {
			ns.t.Logf("output of %s:\n%s", p.name, p.output())
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// signal sends sig to the process (by PID) and waits for it to exit
// within timeout; it returns the exit code.
func (p *proc) signal(sig syscall.Signal, timeout time.Duration) int {
	p.t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, sig); err != nil && p.running() {
		p.t.Fatalf("signal %s: %v", p.name, err)
	}
	return p.wait(timeout)
}

// wait waits for the process to exit within timeout and returns its exit
// code (-1 when a signal ended it).
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %v:\n%s", p.name, timeout, p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitOutput waits until the process has printed text.
func (p *proc) waitOutput(text string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.output(), text) {
		if !p.running() {
			p.t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.waitErr, text, p.output())
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q within %v:\n%s", p.name, text, timeout, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agentProc is a `connscope agent` running in a namespace.
type agentProc struct {
	*proc
	ns      *netns
	metrics string // http://host:port of its metrics server
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
		if !a.running() {
			a.t.Fatalf("%s exited (%v) before it was ready:\n%s", a.name, a.waitErr, a.output())
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s not ready within %v (last /readyz: %s):\n%s", a.name, timeout, last, a.output())
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
		out, err := ns.exec(args...)
		if err != nil {
			ns.t.Fatalf("[%s] %s: %v\n%s", ns.name, p.name, err, out)
		}
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

// golden compares got with testdata/<name>.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to write it)", err)
	}
	if got != string(want) {
		t.Fatalf("rule set differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// eventuallyRules polls the rule set until it equals the golden file.
func (ns *netns) eventuallyRules(timeout time.Duration, name string) {
	ns.t.Helper()
	want, err := os.ReadFile(filepath.Join("testdata", name+".golden"))
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
		_, _, data, err := r.NextFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		frames = append(frames, append([]byte(nil), data...))
		var rec packet.Record
		if err := packet.Decode(data, 0, &rec); err != nil {
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
	var ln net.Listener
	if err := ns.do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		ns.t.Fatal(err)
	}
	var wg sync.WaitGroup
	ns.t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
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
			}()
		}
	}()
	return &server{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
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
