package e2e

import (
	"bytes"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/agent"
	"github.com/connscope/connscope/agent/ship/shiptest"
	"github.com/connscope/connscope/internal/certtest"
	"github.com/connscope/connscope/internal/golden"
	"github.com/connscope/connscope/packet"
)

// Generous bounds: the machine is shared and may stall a process for
// seconds. Nothing is asserted about how fast anything happens.
const (
	startTimeout = 30 * time.Second
	stopTimeout  = 30 * time.Second
	pollTimeout  = 60 * time.Second
)

// policyA is the policy most tests install.
func policyA(extra ...string) []string {
	return append([]string{"--policy", "a", "--label-bit", "3", "--nflog-group", "5", "--probability", "1", "--resync", "1s"}, extra...)
}

func fileSink(t *testing.T) (path, flag string) {
	path = filepath.Join(t.TempDir(), "records.pcapng")
	return path, "file://" + path
}

// TestInstallLogsTheFirstPacketsOfEachConnection runs the agent at
// probability 1 with a packet cap of 3 and the file sink, in each backend:
// exactly our chain, its rules and one jump appear in the backend chosen
// (and nothing in the other); TCP connections on the namespace's loopback,
// IPv4 and IPv6, reach the file as their client's first 3 packets, headers
// only; classify judges them as they were made; the metrics say so; and
// SIGTERM takes the rules out and exits 0.
func TestInstallLogsTheFirstPacketsOfEachConnection(t *testing.T) {
	needRoot(t)
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			ns := newNS(t, "")
			file, sink := fileSink(t)
			a := ns.startAgent("agent", policyA("--backend", backend, "--packet-cap", "3", "--sink", sink)...)
			a.waitReady(startTimeout)
			golden.Require(t, "installed-a-"+backend, ns.rules())

			// One port on both loopback addresses: the client's address
			// tells the families apart.
			srv := ns.serve("127.0.0.1:0")
			ns.serve(fmt.Sprintf("[::1]:%d", srv.port))
			type made struct {
				client string
				port   uint16
				abort  bool
			}
			var conns []made
			v4, v6 := fmt.Sprintf("127.0.0.1:%d", srv.port), fmt.Sprintf("[::1]:%d", srv.port)
			for range 4 {
				conns = append(conns,
					made{"127.0.0.1", ns.talk(v4), false}, made{"127.0.0.1", ns.abort(v4), true},
					made{"::1", ns.talk(v6), false}, made{"::1", ns.abort(v6), true})
			}
			want := 3 * len(conns)
			var m map[string]float64
			eventually(t, pollTimeout, "records shipped", func() bool {
				m = a.scrape()
				return m["connscope_agent_records_shipped_total"] >= float64(want)
			}, func() string { return fmt.Sprintf("metrics: %v", m) })
			checkMetrics(t, m, backend)

			if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
				t.Fatalf("exit status %d after SIGTERM:\n%s", code, a.Output())
			}
			golden.Require(t, "removed-"+backend, ns.rules())

			recs, frames := records(t, file)
			for i, f := range frames {
				if bytes.Contains(f, []byte("hello")) {
					t.Fatalf("frame %d holds payload bytes: % x", i, f)
				}
			}
			gotConns := byConnection(recs, srv.port)
			if len(gotConns) != len(conns) {
				t.Fatalf("%d connections to the servers in the file, want %d", len(gotConns), len(conns))
			}
			results := classify(t, file, int(srv.port), "--packet-cap", "3")
			for _, c := range conns {
				k := connKey{c.client, c.port}
				got, res := gotConns[k], results[k]
				wantFlags := []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK}
				wantRes := "packets=3 stage=\"no_match\" tags=[] signature=\"\" excluded=\"\""
				if c.abort {
					wantFlags[2] = packet.RST | packet.ACK
					wantRes = "packets=3 stage=\"post_ack\" tags=[reset single_rstack] signature=\"SYN; ACK → RST+ACK\" excluded=\"\""
				}
				var flags []packet.Flags
				for _, r := range got {
					flags = append(flags, r.Flags)
				}
				if !slices.Equal(flags, wantFlags) {
					t.Errorf("%v: client packets %v, want %v", k, flags, wantFlags)
					continue
				}
				if got[1].Seq != got[0].Seq+1 || got[2].Seq != got[0].Seq+1 {
					t.Errorf("%v: sequence numbers %d %d %d are not one connection's first packets", k, got[0].Seq, got[1].Seq, got[2].Seq)
				}
				if !c.abort && got[2].PayloadLen != uint16(len("hello\n")) {
					t.Errorf("%v: data packet payload length %d, want 6", k, got[2].PayloadLen)
				}
				if res.verdict() != wantRes {
					t.Errorf("%v: classify %s, want %s", k, res.verdict(), wantRes)
				}
			}
		})
	}
}

// checkMetrics checks that every documented metric is served and that
// those of a healthy agent that logged traffic say so.
func checkMetrics(t *testing.T, m map[string]float64, backend string) {
	t.Helper()
	for _, name := range []string{
		`connscope_agent_packets_logged_total`,
		`connscope_agent_packets_lost_total{reason="kernel_seq_gap"}`,
		`connscope_agent_packets_lost_total{reason="queue_full"}`,
		`connscope_agent_packets_lost_total{reason="rejected"}`,
		`connscope_agent_nflog_enobufs_total`,
		`connscope_agent_nflog_read_errors_total`,
		`connscope_agent_packets_undecodable_total{reason="not_tcp"}`,
		`connscope_agent_packets_undecodable_total{reason="truncated"}`,
		`connscope_agent_packets_undecodable_total{reason="malformed"}`,
		`connscope_agent_records_queued`,
		`connscope_agent_queue_capacity_records`,
		`connscope_agent_reader_wait_seconds_total`,
		`connscope_agent_records_shipped_total`,
		`connscope_agent_sink_batches_total`,
		`connscope_agent_sink_errors_total`,
		`connscope_agent_sink_retries_total`,
		`connscope_agent_sink_failing`,
		`connscope_agent_rules_resyncs_total`,
		`connscope_agent_rules_restores_total`,
		`connscope_agent_rules_errors_total`,
		`connscope_agent_rules_present`,
		`connscope_agent_nflog_bound`,
		`connscope_agent_ready`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if _, ok := m[name]; !ok {
			t.Errorf("metric %s is missing", name)
		}
	}
	for name, want := range map[string]float64{
		`connscope_agent_packets_lost_total{reason="kernel_seq_gap"}`:   0,
		`connscope_agent_packets_lost_total{reason="queue_full"}`:       0,
		`connscope_agent_packets_lost_total{reason="rejected"}`:         0,
		`connscope_agent_packets_undecodable_total{reason="truncated"}`: 0,
		`connscope_agent_sink_errors_total`:                             0,
		`connscope_agent_rules_present`:                                 1,
		`connscope_agent_nflog_bound`:                                   1,
		`connscope_agent_ready`:                                         1,
		`connscope_agent_queue_capacity_records`:                        agent.DefaultQueueCapacity,
	} {
		if m[name] != want {
			t.Errorf("%s = %v, want %v", name, m[name], want)
		}
	}
	info := fmt.Sprintf(`connscope_agent_info{backend=%q,chain="CONNSCOPE-ZKLYCEWK-SRFG5KIU",label_bit="3",nflog_group="5",node=`, backend)
	found := false
	for k := range m {
		found = found || strings.HasPrefix(k, info)
	}
	if !found {
		t.Errorf("no metric starting %s", info)
	}
	if m["connscope_agent_packets_logged_total"] < m["connscope_agent_records_shipped_total"] {
		t.Errorf("shipped %v records but logged only %v packets", m["connscope_agent_records_shipped_total"], m["connscope_agent_packets_logged_total"])
	}
}

// TestResyncRestoresRulesRemovedByOthers flushes our chain, deletes our
// jump, then flushes the whole mangle table, in both families: each time
// the agent restores the exact rule set within a few resync periods (1 s),
// and counts the restores.
func TestResyncRestoresRulesRemovedByOthers(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	_, sink := fileSink(t)
	a := ns.startAgent("agent", policyA("--backend", "nft", "--packet-cap", "3", "--sink", sink)...)
	a.waitReady(startTimeout)
	golden.Require(t, "installed-a-nft", ns.rules())
	const chain = "CONNSCOPE-ZKLYCEWK-SRFG5KIU"

	for i, disrupt := range [][][]string{
		{{"iptables-nft", "-t", "mangle", "-F", chain}, {"ip6tables-nft", "-t", "mangle", "-F", chain}},
		{{"iptables-nft", "-t", "mangle", "-D", "PREROUTING", "1"}, {"ip6tables-nft", "-t", "mangle", "-D", "PREROUTING", "1"}},
		{{"iptables-nft", "-t", "mangle", "-F"}, {"ip6tables-nft", "-t", "mangle", "-F"}},
	} {
		for _, cmd := range disrupt {
			ns.Must(t, cmd...)
		}
		if i == 0 && strings.Contains(ns.rules(), "-A "+chain+" ") {
			t.Fatal("the flush did not take")
		}
		ns.eventuallyRules(pollTimeout, "installed-a-nft")
		var m map[string]float64
		eventually(t, pollTimeout, "restores counted", func() bool {
			m = a.scrape()
			return m["connscope_agent_rules_restores_total"] >= float64(i+1)
		}, func() string { return fmt.Sprintf("restores %v", m["connscope_agent_rules_restores_total"]) })
	}
	a.waitReady(startTimeout)
	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, a.Output())
	}
	golden.Require(t, "removed-nft", ns.rules())
}

// TestKillRestartAndCleanup: after SIGKILL the rules stay (nothing removes
// them); a restart installs the same rule set again, without duplicates;
// `connscope agent cleanup` removes everything of connscope in both
// backends (here also a legacy agent's leftovers), and says so; run again
// it finds nothing and exits 0.
func TestKillRestartAndCleanup(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	_, sink := fileSink(t)
	args := policyA("--backend", "nft", "--packet-cap", "3", "--sink", sink)

	a := ns.startAgent("agent-1", args...)
	a.waitReady(startTimeout)
	if code := a.signal(syscall.SIGKILL, stopTimeout); code != -1 {
		t.Fatalf("exit status %d after SIGKILL", code)
	}
	golden.Require(t, "installed-a-nft", ns.rules())

	a = ns.startAgent("agent-2", args...)
	a.waitReady(startTimeout)
	golden.Require(t, "installed-a-nft", ns.rules())
	eventually(t, pollTimeout, "the start message", func() bool { return strings.Contains(a.Output(), "started:") }, a.Output)
	if out := a.Output(); !strings.Contains(out, "started: took over what an earlier run of this policy left") || strings.Contains(out, "no rules of an earlier run") {
		t.Errorf("the restarted agent does not say it took over the killed one's rules:\n%s", out)
	}
	a.signal(syscall.SIGKILL, stopTimeout)

	// A legacy agent of another policy, killed too.
	_, sinkB := fileSink(t)
	b := ns.startAgent("agent-b", "--policy", "b", "--label-bit", "4", "--nflog-group", "6", "--probability", "0.5",
		"--ports", "22,80", "--backend", "legacy", "--sink", sinkB, "--metrics-addr", "127.0.0.1:9478")
	b.waitReady(startTimeout)
	b.signal(syscall.SIGKILL, stopTimeout)
	golden.Require(t, "killed-a-nft-b-legacy", ns.rules())

	out := ns.Must(t, connscopeBin, "agent", "cleanup")
	for _, want := range []string{
		"iptables-nft (IPv4): deleted chain CONNSCOPE-ZKLYCEWK-SRFG5KIU",
		"ip6tables-nft (IPv6): deleted chain CONNSCOPE-ZKLYCEWK-SRFG5KIU",
		"iptables-legacy (IPv4): deleted -A PREROUTING",
		"ip6tables-legacy (IPv6): deleted chain CONNSCOPE-",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("cleanup output lacks %q:\n%s", want, out)
		}
	}
	golden.Require(t, "cleaned", ns.rules())
	if out := ns.Must(t, connscopeBin, "agent", "cleanup"); strings.TrimSpace(out) != "nothing of connscope found" {
		t.Errorf("second cleanup printed:\n%s", out)
	}
}

// TestTwoAgentsSideBySide: two policies with different label bits and
// groups run at once; stopping one leaves the other's rules intact and it
// stays ready.
func TestTwoAgentsSideBySide(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	_, sinkA := fileSink(t)
	_, sinkB := fileSink(t)
	// One after the other: each inserts its jump at the top of PREROUTING,
	// so the order of the jumps is the reverse of the starts.
	b := ns.startAgent("agent-b", "--policy", "b", "--label-bit", "4", "--nflog-group", "6", "--probability", "0.5",
		"--ports", "22,80", "--backend", "nft", "--resync", "1s", "--sink", sinkB, "--metrics-addr", "127.0.0.1:9478")
	b.waitReady(startTimeout)
	a := ns.startAgent("agent-a", policyA("--backend", "nft", "--packet-cap", "3", "--sink", sinkA)...)
	a.waitReady(startTimeout)
	golden.Require(t, "two-policies-nft", ns.rules())

	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("agent a: exit status %d:\n%s", code, a.Output())
	}
	golden.Require(t, "only-b-nft", ns.rules())
	time.Sleep(2 * time.Second) // two resync periods of b: it must not have changed anything
	golden.Require(t, "only-b-nft", ns.rules())
	b.waitReady(startTimeout)
	if m := b.scrape(); m["connscope_agent_rules_restores_total"] != 0 {
		t.Errorf("agent b restored its rules %v times: a's removal touched them", m["connscope_agent_rules_restores_total"])
	}
	if code := b.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("agent b: exit status %d:\n%s", code, b.Output())
	}
	golden.Require(t, "removed-nft", ns.rules())
}

// TestBusyGroupFailsBeforeAnyRule: a second agent whose NFLOG group is
// held by the first (the same policy with another label bit: an update
// that surged) fails with a clear message, exits non-zero, and installs
// nothing: the first agent's rules are exactly as they were.
func TestBusyGroupFailsBeforeAnyRule(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	_, sinkA := fileSink(t)
	_, sinkB := fileSink(t)
	a := ns.startAgent("agent-a", policyA("--backend", "nft", "--packet-cap", "3", "--sink", sinkA)...)
	a.waitReady(startTimeout)

	out := ns.refusedAgent("agent-b", "--policy", "a", "--label-bit", "9", "--nflog-group", "5", "--probability", "1",
		"--backend", "nft", "--sink", sinkB, "--metrics-addr", "127.0.0.1:9478")
	if want := "--nflog-group 5: nflog group 5 is already bound by another socket in this network namespace"; !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	if strings.Contains(out, "rules installed") {
		t.Errorf("the second agent installed rules:\n%s", out)
	}
	golden.Require(t, "installed-a-nft", ns.rules())
	a.waitReady(startTimeout)
	a.signal(syscall.SIGTERM, stopTimeout)
}

// TestSharedBitOrGroupFailsBeforeAnyRule: with policy a (label bit 3,
// group 5) running, an agent of another policy with bit 3 (and its own
// group, which it could bind) refuses to start, naming policy a and its
// chain, and installs nothing. Once a is SIGKILLed its rules are left
// with no reader on their group: an agent of policy b with a's bit and
// group removes them, says so, and starts; while b runs, a policy on its
// bit is refused. `connscope agent cleanup --policy b` removes the
// leftovers of a killed b.
func TestSharedBitOrGroupFailsBeforeAnyRule(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	_, sinkA := fileSink(t)
	_, sinkB := fileSink(t)
	a := ns.startAgent("agent-a", policyA("--backend", "nft", "--packet-cap", "3", "--sink", sinkA)...)
	a.waitReady(startTimeout)

	out := ns.refusedAgent("agent-samebit", "--policy", "samebit", "--label-bit", "3", "--nflog-group", "8", "--probability", "1",
		"--backend", "nft", "--sink", sinkB, "--metrics-addr", "127.0.0.1:9478")
	for _, want := range []string{`policy "a" (chain CONNSCOPE-ZKLYCEWK-SRFG5KIU in iptables-nft (IPv4)) uses label bit 3`, "connscope agent cleanup --policy a"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "rules installed") || strings.Contains(out, "NFLOG group bound") {
		t.Errorf("the second agent went on:\n%s", out)
	}
	golden.Require(t, "installed-a-nft", ns.rules())

	if code := a.signal(syscall.SIGKILL, stopTimeout); code != -1 {
		t.Fatalf("exit status %d after SIGKILL", code)
	}
	// Its rules are left, and nothing reads its group any more: an agent
	// of another policy with the same bit and group removes them and
	// starts.
	args := []string{"--policy", "b", "--label-bit", "3", "--nflog-group", "5", "--probability", "1",
		"--backend", "nft", "--sink", sinkB, "--metrics-addr", "127.0.0.1:9478"}
	golden.Require(t, "installed-a-nft", ns.rules())
	c := ns.startAgent("agent-b", args...)
	c.waitReady(startTimeout)
	if out := c.Output(); !strings.Contains(out, "removed the rules of another policy whose agent no longer runs") || !strings.Contains(out, `policy=a`) {
		t.Errorf("agent b does not say it removed policy a's rules:\n%s", out)
	}
	if rs := ns.rules(); strings.Contains(rs, "CONNSCOPE-ZKLYCEWK-SRFG5KIU") || !strings.Contains(rs, "connscope policy b:") {
		t.Errorf("after agent b started, the rules are:\n%s", rs)
	}
	// While b runs (its group bound), a policy on its bit is refused.
	_, sinkD := fileSink(t)
	if out := ns.refusedAgent("agent-a-again", policyA("--backend", "nft", "--packet-cap", "3", "--sink", sinkD, "--nflog-group", "9")...); !strings.Contains(out, `policy "b"`) {
		t.Fatalf("an agent sharing running agent b's bit was refused without naming policy b:\n%s", out)
	}
	if code := c.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("agent b: exit status %d:\n%s", code, c.Output())
	}
	golden.Require(t, "removed-nft", ns.rules())

	// connscope agent cleanup --policy NAME removes one policy's leftovers.
	k := ns.startAgent("agent-k", args...)
	k.waitReady(startTimeout)
	if code := k.signal(syscall.SIGKILL, stopTimeout); code != -1 {
		t.Fatalf("exit status %d after SIGKILL", code)
	}
	out = ns.Must(t, connscopeBin, "agent", "cleanup", "--policy", "b")
	if !strings.Contains(out, "deleted chain CONNSCOPE-") {
		t.Errorf("cleanup --policy b printed:\n%s", out)
	}
	golden.Require(t, "removed-nft", ns.rules())
}

// TestLegacyWithoutNetRawFailsAtStart: an agent with CAP_NET_ADMIN but
// not CAP_NET_RAW (setpriv's bounding set) and --backend legacy fails at
// once, naming CAP_NET_RAW, without binding its group or installing
// anything, and says nothing about rules left behind.
func TestLegacyWithoutNetRawFailsAtStart(t *testing.T) {
	needRoot(t, "setpriv")
	ns := newNS(t, "")
	_, sink := fileSink(t)
	a := ns.start("agent", append([]string{"setpriv", "--bounding-set=-all,+net_admin", connscopeBin, "agent"},
		policyA("--backend", "legacy", "--sink", sink)...)...)
	code := a.Wait(t, stopTimeout)
	out := a.Output()
	if code == 0 || !strings.Contains(out, "iptables-legacy needs CAP_NET_RAW") || !strings.Contains(out, "--backend nft") {
		t.Fatalf("exit status %d, want a failure naming CAP_NET_RAW:\n%s", code, out)
	}
	for _, not := range []string{"NFLOG group bound", "could not install", "could not remove", "left"} {
		if strings.Contains(out, not) {
			t.Errorf("output says %q:\n%s", not, out)
		}
	}
	golden.Require(t, "removed-nft", ns.rules())
}

// TestRulesNeverInstalledAreNotReportedLeft: when every iptables write
// fails (here iptables-legacy run without CAP_NET_RAW by a wrapper in
// PATH, while the agent itself has every capability), the agent retries,
// and on SIGTERM exits 0 saying that no rules were installed, instead of
// failing with "could not remove every rule".
func TestRulesNeverInstalledAreNotReportedLeft(t *testing.T) {
	needRoot(t, "setpriv")
	ns := newNS(t, "")
	bin := t.TempDir()
	for _, prog := range []string{"iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save"} {
		real, err := exec.LookPath(prog)
		if err != nil {
			t.Fatal(err)
		}
		script := "#!/bin/sh\nexec setpriv --bounding-set=-all,+net_admin " + real + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(bin, prog), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, sink := fileSink(t)
	a := ns.start("agent", append([]string{"env", "PATH=" + bin + ":" + os.Getenv("PATH"), connscopeBin, "agent"},
		policyA("--backend", "legacy", "--sink", sink)...)...)
	eventually(t, pollTimeout, "a failed install", func() bool {
		return strings.Contains(a.Output(), "could not install the sampling rules")
	}, a.Output)
	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, a.Output())
	}
	if out := a.Output(); !strings.Contains(out, "no rules were installed, so none are left") || strings.Contains(out, "could not remove every rule") {
		t.Errorf("output:\n%s", out)
	}
	golden.Require(t, "removed-nft", ns.rules())
}

// TestAStopSurvivesAnIptablesRunKilledBySignal: as under systemd's
// default KillMode=control-group, which signals every process of a
// service, the first iptables run of the removal at SIGTERM dies by a
// signal (a wrapper kills itself, once, after the test armed it). The
// agent tries once more, removes every rule and exits 0.
func TestAStopSurvivesAnIptablesRunKilledBySignal(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	bin := t.TempDir()
	armed := filepath.Join(bin, "armed")
	real, err := exec.LookPath("iptables-nft")
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\n# dies by SIGTERM at the first listing of PREROUTING once %[1]s exists, once\n"+
		"case \" $* \" in *\" -S PREROUTING \"*) rm %[1]s 2>/dev/null && kill -TERM $$ ;; esac\nexec %[2]s \"$@\"\n", armed, real)
	if err := os.WriteFile(filepath.Join(bin, "iptables-nft"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, sink := fileSink(t)
	a := ns.start("agent", append([]string{"env", "PATH=" + bin + ":" + os.Getenv("PATH"), connscopeBin, "agent"},
		policyA("--backend", "nft", "--resync", "1h", "--sink", sink)...)...)
	eventually(t, pollTimeout, "the rules installed", func() bool { return strings.Contains(a.Output(), "rules installed") }, a.Output)
	if !strings.Contains(ns.rules(), "CONNSCOPE-") {
		t.Fatalf("no rule installed:\n%s", ns.rules())
	}
	if err := os.WriteFile(armed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, a.Output())
	}
	if _, err := os.Stat(armed); err == nil {
		t.Fatal("the wrapper never fired: the removal did not list PREROUTING through it, so this checks nothing")
	}
	if out := a.Output(); !strings.Contains(out, "trying once more") || !strings.Contains(out, "rules removed") {
		t.Errorf("want a retry, then the rules removed:\n%s", out)
	}
	golden.Require(t, "removed-nft", ns.rules())
}

// sinkDown starts an agent whose gRPC sink is a receiver that was stopped
// at once (its port is closed), with a queue of sinkDownCapacity records,
// sampling only a server of the namespace (so that the agent's own
// connections, its sink and the scrapes, are not counted). It sends that
// server sinkDownConns aborted connections (3 client packets each: 900
// records) and returns once the queue is full and the sink's failures are
// counted.
func sinkDown(t *testing.T, extra ...string) (ns *netns, recv *shiptest.Receiver, a *agentProc, addr string) {
	t.Helper()
	ns = newNS(t, "")
	if err := ns.Do(func() error { recv = shiptest.Start(t, shiptest.Options{}); return nil }); err != nil {
		t.Fatal(err)
	}
	recv.Stop()
	srv := ns.serve("127.0.0.1:0")
	addr = fmt.Sprintf("127.0.0.1:%d", srv.port)
	a = ns.startAgent("agent", policyA(append([]string{"--backend", "nft", "--packet-cap", "3", "--sink", recv.URL(), "--ports", fmt.Sprint(srv.port),
		"--queue-capacity", strconv.Itoa(sinkDownCapacity)}, extra...)...)...)
	a.waitReady(startTimeout)
	for range sinkDownConns {
		ns.abort(addr)
	}
	var m map[string]float64
	eventually(t, pollTimeout, "the queue full and the sink's failures counted", func() bool {
		m = a.scrape()
		return m["connscope_agent_records_queued"] == sinkDownCapacity && m["connscope_agent_sink_errors_total"] > 0
	}, func() string { return fmt.Sprintf("metrics %v", m) })
	return ns, recv, a, addr
}

const sinkDownCapacity, sinkDownConns = 256, 300

// TestSinkDownThenBack: with the classifier down (grpc:// to a closed
// port) the agent keeps running and sampling, the queue fills to its
// capacity and no further, sink errors are counted, memory stays bounded,
// and /readyz turns 503 after --sink-unready-after. The reader waits for
// room instead of dropping: what it has not read stays in the NFLOG
// socket's receive buffer, which holds these 900 records with room to
// spare, so nothing is lost. When a receiver appears on that port, every
// record logged meanwhile is shipped, new ones too, and the agent is ready
// again.
func TestSinkDownThenBack(t *testing.T) {
	needRoot(t)
	const capacity, conns = sinkDownCapacity, sinkDownConns
	ns, recv, a, addr := sinkDown(t, "--sink-unready-after", "2s", "--shutdown-timeout", "3s")
	var body string
	eventually(t, pollTimeout, "/readyz reports the failing sink", func() bool {
		var code int
		code, body, _ = ns.httpGet(a.metrics + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "the sink has been failing for")
	}, func() string { return "last /readyz: " + body })
	m := a.scrape()
	if q := m["connscope_agent_records_queued"]; q != capacity {
		t.Errorf("%v records queued, want the capacity %d", q, capacity)
	}
	if logged := m["connscope_agent_packets_logged_total"]; logged >= 3*conns {
		t.Errorf("%v packets read with the sink down and a queue of %d: the reader did not wait for room", logged, capacity)
	}
	if m["connscope_agent_reader_wait_seconds_total"] <= 0 {
		t.Errorf("connscope_agent_reader_wait_seconds_total = %v with the reader waiting", m["connscope_agent_reader_wait_seconds_total"])
	}
	for _, reason := range []string{"queue_full", "kernel_seq_gap"} {
		if lost := m[`connscope_agent_packets_lost_total{reason="`+reason+`"}`]; lost != 0 {
			t.Errorf("%v packets lost (%s) with the sink down: the socket's buffer should hold them", lost, reason)
		}
	}
	if rss := rssBytes(t, a.Pid()); rss > 200<<20 {
		t.Errorf("agent resident memory %d MiB with the sink down", rss>>20)
	}
	if !a.Running() {
		t.Fatalf("the agent exited:\n%s", a.Output())
	}

	if err := ns.Do(func() error { recv.Restart(); return nil }); err != nil {
		t.Fatal(err)
	}
	recv.WaitRecords(3*conns, pollTimeout)
	a.waitReady(pollTimeout)
	for range 10 { // new connections are shipped too
		ns.abort(addr)
	}
	eventually(t, pollTimeout, "every record shipped", func() bool {
		m = a.scrape()
		return m["connscope_agent_records_shipped_total"] == 3*(conns+10) && m["connscope_agent_sink_failing"] == 0
	}, func() string { return fmt.Sprintf("metrics %v", m) })
	if logged := m["connscope_agent_packets_logged_total"]; logged != 3*(conns+10) {
		t.Errorf("%v packets logged, want %d", logged, 3*(conns+10))
	}
	if st := recv.Stats(); st.Records != 3*(conns+10) {
		t.Errorf("receiver stored %d records, want %d", st.Records, 3*(conns+10))
	}
	for _, b := range recv.Batches() {
		if b.Node == "" || b.Policy != "a" || b.Counters == nil || b.Counters.PacketsDroppedQueueFull != 0 || b.Counters.PacketsLostKernel != 0 {
			t.Fatalf("batch %d: node %q policy %q counters %v", b.Sequence, b.Node, b.Policy, b.Counters)
		}
	}
	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, a.Output())
	}
}

// TestStopWithTheSinkDown: SIGTERM while the sink is down and the queue
// full, with the reader waiting for room, stops the agent within its
// shutdown timeout: the rules are removed, the waiting reader lets go, and
// the stop line accounts for every packet read (queued and left unshipped,
// or dropped at the full queue as it stopped).
func TestStopWithTheSinkDown(t *testing.T) {
	needRoot(t)
	ns, _, a, _ := sinkDown(t, "--shutdown-timeout", "2s")

	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, a.Output())
	}
	golden.Require(t, "removed-nft", ns.rules())
	out := a.Output()
	if !strings.Contains(out, "records left unshipped") {
		t.Errorf("no word of the records left unshipped:\n%s", out)
	}
	// logged = shipped + unshipped + droppedQueueFull, from the stop line;
	// and every packet the rules logged (3 per connection, all in the
	// socket's buffer) is read before the socket is closed, or counted
	// as lost by the kernel.
	var logged, lostKernel, shipped, unshipped, dropped int
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "msg=stopped") {
			continue
		}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.Atoi(v)
			switch k {
			case "logged":
				logged = n
			case "lostKernel":
				lostKernel = n
			case "shipped":
				shipped = n
			case "unshipped":
				unshipped = n
			case "droppedQueueFull":
				dropped = n
			}
		}
	}
	t.Logf("stop line: logged %d, shipped %d, unshipped %d, dropped at the full queue %d", logged, shipped, unshipped, dropped)
	if logged == 0 || shipped != 0 || logged != shipped+unshipped+dropped {
		t.Errorf("stop line: logged %d, shipped %d, unshipped %d, dropped %d: want logged = the sum, none shipped\n%s",
			logged, shipped, unshipped, dropped, out)
	}
	if logged+lostKernel != 3*sinkDownConns {
		t.Errorf("stop line: logged %d + lost in the kernel %d, want the %d packets the rules logged: the agent closed the socket with packets unread\n%s",
			logged, lostKernel, 3*sinkDownConns, out)
	}
}

// TestSamplingShareIsBinomial: at probability 0.1, of 2000 new
// connections the share the agent logged is within 5 standard deviations
// of the binomial mean (200 ± 67), counted from the file sink.
func TestSamplingShareIsBinomial(t *testing.T) {
	needRoot(t)
	ns := newNS(t, "")
	file, sink := fileSink(t)
	a := ns.startAgent("agent", "--policy", "sample", "--label-bit", "5", "--nflog-group", "7", "--probability", "0.1",
		"--packet-cap", "1", "--backend", "nft", "--sink", sink)
	a.waitReady(startTimeout)
	srv := ns.serve("127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", srv.port)
	const n, p = 2000, 0.1
	if err := ns.Do(func() error {
		for range n {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return err
			}
			_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT: ports are not reused
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, a.Output())
	}
	recs, _ := records(t, file)
	syns := map[[2]uint32]bool{}
	for _, r := range recs {
		if r.DstPort == srv.port {
			if r.Flags != packet.SYN {
				t.Fatalf("packet cap 1 logged a non-SYN: %v", &r)
			}
			syns[[2]uint32{uint32(r.SrcPort), r.Seq}] = true
		}
	}
	k := float64(len(syns))
	mean, sd := n*p, math.Sqrt(n*p*(1-p))
	t.Logf("sampled %v of %d connections (expected %.0f ± %.1f)", k, n, mean, sd)
	if math.Abs(k-mean) > 5*sd {
		t.Errorf("sampled %v of %d connections at probability %v: more than 5 standard deviations (%.1f) from %.0f", k, n, p, sd, mean)
	}
}

// TestGRPCSinkOverTLSWithItsCA: a grpcs:// sink whose certificate is
// signed by a private CA ships the sampled records when --sink-ca-file
// names that CA, and ships nothing (counting sink errors, /readyz not
// ready) when the agent trusts only the system's roots.
func TestGRPCSinkOverTLSWithItsCA(t *testing.T) {
	ca := certtest.NewCA(t, t.TempDir(), "connscope-test")
	serverTLS := ca.ServerConfig(t, "classifier")
	for _, trust := range []string{"ca-file", "system-roots"} {
		t.Run(trust, func(t *testing.T) {
			ns := newNS(t, "")
			var recv *shiptest.Receiver
			if err := ns.Do(func() error {
				recv = shiptest.Start(t, shiptest.Options{TLS: serverTLS})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(recv.URL(), "grpcs://") {
				t.Fatalf("receiver URL %s", recv.URL())
			}
			srv := ns.serve("127.0.0.1:0")
			addr := fmt.Sprintf("127.0.0.1:%d", srv.port)
			args := []string{"--backend", "nft", "--packet-cap", "3", "--sink", recv.URL(), "--ports", fmt.Sprint(srv.port),
				"--sink-unready-after", "1s", "--shutdown-timeout", "2s"}
			if trust == "ca-file" {
				args = append(args, "--sink-ca-file", ca.CertFile)
			}
			a := ns.startAgent("agent", policyA(args...)...)
			if trust == "ca-file" {
				a.waitReady(startTimeout)
			} else {
				// Live but never ready: wait for its rules and its NFLOG
				// group (/healthz answers before they are in place, and
				// traffic before them is not logged, so nothing would
				// reach the sink to fail).
				var m map[string]float64
				eventually(t, startTimeout, "the agent's rules and NFLOG group", func() bool {
					code, _, err := ns.httpGet(a.metrics + "/healthz")
					if err != nil || code != 200 {
						return false
					}
					m = a.scrape()
					return m["connscope_agent_rules_present"] == 1 && m["connscope_agent_nflog_bound"] == 1
				}, func() string { return fmt.Sprintf("metrics %v\n%s", m, a.Output()) })
			}
			const conns = 5
			for range conns {
				ns.abort(addr)
			}
			var m map[string]float64
			if trust == "ca-file" {
				recv.WaitRecords(3*conns, pollTimeout)
				eventually(t, pollTimeout, "every record shipped", func() bool {
					m = a.scrape()
					return m["connscope_agent_records_shipped_total"] == 3*conns
				}, func() string { return fmt.Sprintf("metrics %v", m) })
			} else {
				eventually(t, pollTimeout, "sink errors counted", func() bool {
					m = a.scrape()
					return m["connscope_agent_sink_errors_total"] > 0 && m["connscope_agent_sink_failing"] == 1
				}, func() string { return fmt.Sprintf("metrics %v", m) })
				if st := recv.Stats(); st.Records != 0 {
					t.Errorf("an agent that does not trust the CA shipped %d records", st.Records)
				}
				if out := a.Output(); !strings.Contains(out, "certificate") {
					t.Errorf("the agent's log does not say the certificate is not trusted:\n%s", out)
				}
			}
			if code := a.signal(syscall.SIGTERM, stopTimeout); code != 0 {
				t.Fatalf("exit status %d:\n%s", code, a.Output())
			}
		})
	}
}
