package scenarios

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// scenarioOf returns the scenario whose server port the connection went to.
func scenarioOf(c conn) *scenario {
	for _, s := range scenarios {
		if s.port == c.DstPort {
			return s
		}
	}
	return nil
}

// result is the part of a connection's classification that scenarios assert.
func result(c conn) want {
	tags := slices.Clone(c.Tags)
	slices.Sort(tags)
	return want{Stage: c.Stage, Tags: tags, Signature: c.Signature, Excluded: c.Excluded}
}

func (w want) String() string {
	tags := slices.Clone(w.Tags)
	slices.Sort(tags)
	s := fmt.Sprintf("stage=%q tags=[%s] signature=%q", w.Stage, strings.Join(tags, " "), w.Signature)
	if w.Excluded != "" {
		s += fmt.Sprintf(" excluded=%q", w.Excluded)
	}
	return s
}

func (w want) equal(o want) bool { return w.String() == o.String() }

// checkCapture asserts that every connection of one capture belongs to a
// scenario, goes to the scenario's server address, is classified as the
// scenario expects, and that each scenario has its number of connections.
func checkCapture(t *testing.T, label string, conns []conn) {
	t.Helper()
	counts := map[*scenario]int{}
	for _, c := range conns {
		s := scenarioOf(c)
		if s == nil {
			t.Errorf("%s: connection %s belongs to no scenario: %s", label, c.key(), result(c))
			continue
		}
		counts[s]++
		if c.DstIP != s.serverAddr() {
			t.Errorf("%s: %s: connection %s: want server address %s", label, s.name, c.key(), s.serverAddr())
		}
		want := s.want
		got := result(c)
		if !got.equal(want) {
			t.Errorf("%s: %s: connection %s (%d packets):\n  got  %s\n  want %s\n  because %s",
				label, s.name, c.key(), c.Packets, got, want, s.why)
		}
	}
	for _, s := range scenarios {
		if counts[s] != s.count {
			t.Errorf("%s: %s: %d connections to port %d, want %d", label, s.name, counts[s], s.port, s.count)
		}
	}
}

// compareCaptures asserts that the tcpdump capture and another, made by
// NFLOG rules (the seed's, read by tshark, or the agent's, in its file),
// hold the same connections with the same classification. NFLOG sees only
// the first 10 packets of a connection and only packets conntrack finds in
// window; the scenarios are built so that neither changes a classification
// (the packet cap is 10 too, and the injector's resets are in window).
func compareCaptures(t *testing.T, label string, in, other []conn) {
	t.Helper()
	byKey := map[string]conn{}
	for _, c := range other {
		byKey[c.key()] = c
	}
	for _, c := range in {
		n, ok := byKey[c.key()]
		delete(byKey, c.key())
		if !ok {
			t.Errorf("connection %s is in the tcpdump capture (%s) but not in the %s", c.key(), result(c), label)
			continue
		}
		if !result(c).equal(result(n)) {
			t.Errorf("connection %s: tcpdump capture gives %s (%d packets), %s gives %s (%d packets)",
				c.key(), result(c), c.Packets, label, result(n), n.Packets)
		}
	}
	for k, n := range byKey {
		t.Errorf("connection %s is in the %s (%s) but not in the tcpdump capture", k, label, result(n))
	}
}

// keepArtefacts copies the lab's files (captures, configs, process output)
// and a text rendering of each capture to a folder outside t.TempDir when the
// test failed or -scenarios.keep names one.
func (l *lab) keepArtefacts() {
	dest := *keepDir
	if dest == "" {
		if !l.t.Failed() {
			return
		}
		dest = filepath.Join(os.TempDir(), "connscope-scenarios-"+time.Now().Format("20060102-150405"))
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		l.t.Errorf("keep artefacts: %v", err)
		return
	}
	entries, _ := os.ReadDir(l.dir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(l.dir, e.Name()))
		if err == nil {
			err = os.WriteFile(filepath.Join(dest, e.Name()), b, 0o644)
		}
		if err != nil {
			l.t.Errorf("keep artefacts: %v", err)
		}
	}
	for _, capture := range []string{"in.pcap", "nflog.pcapng", "agent.pcapng"} {
		path := filepath.Join(l.dir, capture)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		text, err := l.run(time.Minute, nil, "tshark", "-n", "-r", path, "-T", "fields", "-E", "separator=\t",
			"-e", "frame.time_relative", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport",
			"-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport", "-e", "tcp.flags.str",
			"-e", "tcp.seq_raw", "-e", "tcp.ack_raw", "-e", "tcp.window_size_value", "-e", "ip.ttl", "-e", "ipv6.hlim",
			"-e", "ip.id", "-e", "tcp.len")
		if err != nil {
			text = err.Error()
		}
		_ = os.WriteFile(filepath.Join(dest, capture+".txt"), []byte(text), 0o644)
	}
	l.t.Logf("captures and logs kept in %s", dest)
}

// logTable logs one line per scenario: what it expects and what each capture
// gave (each distinct result once, with its number of connections), then
// how many packets each capture holds of the scenarios' connections.
func logTable(t *testing.T, in, nflog, agent []conn) {
	t.Helper()
	results := func(conns []conn, s *scenario) string {
		counts := map[string]int{}
		var order []string
		for _, c := range conns {
			if scenarioOf(c) != s {
				continue
			}
			r := result(c).String()
			if counts[r] == 0 {
				order = append(order, r)
			}
			counts[r]++
		}
		var parts []string
		for _, r := range order {
			mark := "ok"
			switch {
			case r == s.want.String():
			default:
				mark = "UNEXPECTED"
			}
			parts = append(parts, fmt.Sprintf("%d× %s %s", counts[r], mark, r))
		}
		return strings.Join(parts, "; ")
	}
	var b strings.Builder
	for _, s := range scenarios {
		fmt.Fprintf(&b, "\n%-26s want     %s\n%-26s tcpdump  %s\n%-26s NFLOG    %s\n%-26s agent    %s",
			s.name, s.want, "", results(in, s), "", results(nflog, s), "", results(agent, s))
	}
	packets := func(conns []conn) int {
		n := 0
		for _, c := range conns {
			n += c.Packets
		}
		return n
	}
	fmt.Fprintf(&b, "\npackets of the connections: tcpdump %d, NFLOG %d, agent %d", packets(in), packets(nflog), packets(agent))
	t.Logf("scenario results:%s", b.String())
}
