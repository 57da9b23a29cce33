package scenarios

// The third capture: `connscope agent` in the server namespace, beside the
// seed's rules, writing the packets its own rules log to a pcapng file.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
)

// The agent's sampling policy: a label bit and an NFLOG group of its own,
// next to the seed rules' (labelBit, nflogGroup) in the same namespace.
// Probability 1 and a cap of 10 packets, as the seed's rules.
const (
	agentPolicy     = "scenarios"
	agentLabelBit   = 18
	agentNFLOGGroup = 18
	agentPacketCap  = 10
)

// agentSpec is one `connscope agent` a test runs in the server
// namespace: its sampling policy (a label bit and an NFLOG group of its
// own; probability 1 and a cap of agentPacketCap packets), its sink, and
// flags beyond those.
type agentSpec struct {
	policy          string
	labelBit, group int
	sink            string
	extra           []string
}

// fileAgent is TestScenarios' agent: the scenarios' policy, writing to a
// pcapng file.
func fileAgent(file string) agentSpec {
	return agentSpec{policy: agentPolicy, labelBit: agentLabelBit, group: agentNFLOGGroup, sink: "file://" + file}
}

// commentPrefix starts the comment of every rule the agent installs
// (package rules); the seed's rules say "connscope scenario: " instead.
func (a agentSpec) commentPrefix() string { return "connscope policy " + a.policy + ":" }

// saveProgram is one iptables-save of one backend and family.
type saveProgram struct{ name, family string }

// savePrograms read the server namespace's rules in both backends and both
// families: the agent chooses its backend itself (auto), so the test looks
// at all four. None of them is given -t, so none creates a table.
var savePrograms = []saveProgram{
	{"iptables-nft-save", "IPv4"},
	{"ip6tables-nft-save", "IPv6"},
	{"iptables-legacy-save", "IPv4"},
	{"ip6tables-legacy-save", "IPv6"},
}

// agentTools are the programs the agent and its checks need besides those
// of the lab.
var agentTools = []string{"iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy",
	"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"}

// ruleLine is one line of iptables-save output that mentions connscope.
type ruleLine struct {
	prog saveProgram
	line string
}

func (r ruleLine) String() string { return r.prog.name + ": " + r.line }

// connscopeRules reads every rule set of the server namespace and returns
// the lines that mention connscope: the agent's chain, its rules and jump,
// and the seed's two rules.
func (l *lab) connscopeRules() []ruleLine {
	l.t.Helper()
	var lines []ruleLine
	for _, p := range savePrograms {
		out, err := l.run(30*time.Second, l.server, p.name)
		if err != nil {
			l.t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if !strings.Contains(strings.ToLower(line), "connscope") {
				continue
			}
			lines = append(lines, ruleLine{prog: p, line: line})
		}
	}
	return lines
}

// agentJumps returns the families in which the jump of agent a from
// PREROUTING is in place. The agent fills its chain before it inserts the
// jump, so a jump means the family's rules are complete.
func agentJumps(lines []ruleLine, a agentSpec) map[string]bool {
	families := map[string]bool{}
	for _, r := range lines {
		if strings.HasPrefix(r.line, "-A PREROUTING ") && strings.Contains(r.line, "-j CONNSCOPE-") &&
			strings.Contains(r.line, a.commentPrefix()) {
			families[r.prog.family] = true
		}
	}
	return families
}

// args are the arguments of `connscope agent` (the binary bin) for a.
func (a agentSpec) args(bin string) []string {
	return append([]string{bin, "agent",
		"--policy", a.policy,
		"--probability", "1",
		"--packet-cap", strconv.Itoa(agentPacketCap),
		"--label-bit", strconv.Itoa(a.labelBit),
		"--nflog-group", strconv.Itoa(a.group),
		"--sink", a.sink,
		// No metrics server: polling it from inside the namespace would
		// make TCP connections the seed's rules (and the agent's) log.
		"--metrics-addr=",
		"--log-json",
	}, a.extra...)
}

// startAgent starts agent a (the binary bin) in the server namespace, its
// output in the lab's folder as name.out and name.err, and returns once
// its rules are in place in both families, read with iptables-save. The
// agent binds its NFLOG group before it installs any rule, so from then
// on nothing it logs is lost to a missing reader.
func (l *lab) startAgent(name, bin string, a agentSpec) *netnstest.Proc {
	l.t.Helper()
	p := l.start(name, l.server, a.args(bin)...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		lines := l.connscopeRules()
		if j := agentJumps(lines, a); j["IPv4"] && j["IPv6"] {
			l.t.Logf("%s ready (backend %s): %d rule lines of its own beside %d others",
				name, agentLogField(p, "rules installed", "backend"), len(ofAgent(lines, a, true)), len(ofAgent(lines, a, false)))
			return p
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("the rules of %s were not in place in both families within 30 s; connscope rules seen:\n%s\nagent output:\n%s",
				name, joinLines(lines), p.Output())
		}
		select {
		case <-p.Done():
			l.t.Fatalf("%s exited (%v) before its rules were in place:\n%s", name, p.Err(), p.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ofAgent returns the lines of agent a (mine: its rules, its jumps and its
// chains' declarations) or all the others.
func ofAgent(lines []ruleLine, a agentSpec, mine bool) []ruleLine {
	chains := map[string]bool{} // ":CONNSCOPE-... " declarations of a's chains
	for _, r := range lines {
		if _, chain, ok := strings.Cut(r.line, "-j CONNSCOPE-"); ok && strings.Contains(r.line, a.commentPrefix()) {
			chains[":CONNSCOPE-"+strings.Fields(chain)[0]+" "] = true
		}
	}
	var out []ruleLine
	for _, r := range lines {
		decl, _, _ := strings.Cut(r.line, "- [")
		of := strings.Contains(r.line, a.commentPrefix()) || chains[decl]
		if of == mine {
			out = append(out, r)
		}
	}
	return out
}

func joinLines(lines []ruleLine) string {
	var b strings.Builder
	for _, r := range lines {
		fmt.Fprintf(&b, "  %s\n", r)
	}
	if b.Len() == 0 {
		return "  (none)\n"
	}
	return b.String()
}

// stopAgent sends SIGTERM to agent a (its PID: nsenter execs it) and
// checks that it exits 0, that it removed every rule of its own and no
// other (the seed's, other agents'), and that it lost nothing: no kernel
// sequence gap, receive-buffer overflow, undecodable packet, queue drop,
// sink error or unshipped record, as its last log line counts them.
func (l *lab) stopAgent(p *netnstest.Proc, a agentSpec) {
	t := l.t
	t.Helper()
	others := joinLines(ofAgent(l.connscopeRules(), a, false))
	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to the agent (PID %d): %v", p.Pid(), err)
	}
	// The agent removes its rules, reads what the kernel still held and
	// flushes its queue within its shutdown timeout (10 s).
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.Done()
		t.Fatalf("the agent did not exit within 30 s of SIGTERM; killed:\n%s", p.Output())
	}
	var exit *exec.ExitError
	switch {
	case p.Err() == nil:
	case errors.As(p.Err(), &exit):
		t.Errorf("the agent exited with status %d after SIGTERM, want 0:\n%s", exit.ExitCode(), p.Output())
	default:
		t.Errorf("the agent: %v:\n%s", p.Err(), p.Output())
	}

	lines := l.connscopeRules()
	if left := ofAgent(lines, a, true); len(left) > 0 {
		t.Errorf("agent %s left rules of its own after SIGTERM:\n%s", a.policy, joinLines(left))
	}
	if after := joinLines(ofAgent(lines, a, false)); after != others {
		t.Errorf("agent %s changed rules not its own (it must remove only its own):\nbefore:\n%safter:\n%s", a.policy, others, after)
	}

	stopped := agentLog(p, "stopped")
	if stopped == nil {
		t.Errorf("the agent logged no \"stopped\" line:\n%s", p.Output())
		return
	}
	for _, k := range []string{"lostKernel", "enobufs", "undecodable", "droppedQueueFull", "unshipped", "sinkErrors"} {
		v, ok := stopped[k].(float64)
		if !ok {
			t.Errorf("the agent's \"stopped\" line has no number %q: %v", k, stopped)
		} else if v != 0 {
			t.Errorf("the agent's \"stopped\" line counts %s=%v, want 0: %v", k, v, stopped)
		}
	}
	if stopped["logged"] != stopped["shipped"] {
		t.Errorf("the agent logged %v packets and shipped %v: %v", stopped["logged"], stopped["shipped"], stopped)
	}
	t.Logf("agent stopped: logged %v packets, shipped %v", stopped["logged"], stopped["shipped"])
}

// agentLog returns the fields of the agent's first JSON log line whose msg
// is msg, or nil.
func agentLog(p *netnstest.Proc, msg string) map[string]any {
	for _, line := range strings.Split(p.Stderr(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	return nil
}

// agentLogField returns one field of agentLog as text, "?" when missing.
func agentLogField(p *netnstest.Proc, msg, field string) string {
	if v, ok := agentLog(p, msg)[field]; ok {
		return fmt.Sprint(v)
	}
	return "?"
}
