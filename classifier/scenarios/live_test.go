package scenarios

import (
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
)

var (
	keepDir = flag.String("scenarios.keep", "", "copy the captures and logs of TestScenarios to this folder (they are kept under /tmp anyway when the test fails)")
	update  = flag.Bool("update", false, "TestScenarios: write the captures of a passing run and their golden files to testdata/")
)

// scriptDir holds the scenario programs: server.py, linger_client.py and
// injector.py.
var scriptDir = func() string {
	d, err := filepath.Abs("../../hack/scenarios")
	if err != nil {
		panic(err)
	}
	return d
}()

// The NFLOG group and conntrack label bit of the seed's rules in the server
// namespace.
const (
	nflogGroup = 17
	labelBit   = 17
)

// classifyFlags are the flags the scenario captures are classified with.
var classifyFlags = []string{"--idle-timeout", idleTimeout.String()}

// TestScenarios makes every scenario's traffic, captures what the server
// receives with tcpdump, with the seed's NFLOG rules and with `connscope
// agent` (its own rules, its pcapng file sink), classifies the three
// captures with `connscope classify` and checks every connection against
// its scenario's expectation, and the NFLOG capture's and the agent's
// classification of each connection against tcpdump's.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario traffic takes ~30 s; skipped in -short mode")
	}
	netnstest.NeedRoot(t, "network namespaces, iptables, raw sockets")
	python := requireTools(t, agentTools...)
	cli := buildCLI(t) // in the background while the lab is set up
	l := newLab(t, python)
	t.Cleanup(func() { l.keepArtefacts() })

	l.installMiddleboxes(scenarios)
	for _, rule := range seedRules() {
		l.server.Must(t, append([]string{"iptables", "-t", "mangle"}, rule...)...)
		l.server.Must(t, append([]string{"ip6tables", "-t", "mangle"}, rule...)...)
	}
	serversReady := l.startServers(scenarios)

	// Captures: what the server receives, three times.
	inPcap := filepath.Join(l.dir, "in.pcap")
	nflogPcap := filepath.Join(l.dir, "nflog.pcapng")
	agentPcap := filepath.Join(l.dir, "agent.pcapng")
	dump := l.start("tcpdump", l.server, "tcpdump", "-Q", "in", "-i", serverIf, "-n", "-s", "128",
		"--immediate-mode", "-U", "-w", inPcap, "tcp")
	nflog := l.start("tshark", l.server, "tshark", "-q", "-i", "nflog:"+strconv.Itoa(nflogGroup), "-w", nflogPcap)

	// Generous waits: python and tshark start slowly on a busy machine.
	serversReady()
	dump.WaitOutput(t, "listening on", 30*time.Second)
	// tshark prints "Capturing on" before dumpcap has bound the NFLOG group;
	// packets logged before "Capture started" are lost.
	nflog.WaitOutput(t, "Capture started", 30*time.Second)
	// The agent, beside the seed's rules, once built; startAgent returns
	// when its rules are in place.
	bin := cli()
	agent := l.startAgent("agent", bin, fileAgent(agentPcap))

	// All scenarios but the marker at once.
	var marker *scenario
	var others []*scenario
	for _, s := range scenarios {
		if s.port == markerPort {
			marker = s
		} else {
			others = append(others, s)
		}
	}
	l.drive(others)

	// Silence longer than the idle timeout, then the marker connection, so
	// the captures' last packet is past every other connection's timeout.
	time.Sleep(idleTimeout + 1500*time.Millisecond)
	l.drive([]*scenario{marker})
	time.Sleep(2 * time.Second) // let the NFLOG reader drain
	l.stop(dump)
	l.stop(nflog)
	l.stopAgent(agent, fileAgent(agentPcap))
	if t.Failed() {
		t.FailNow()
	}

	inConns := classify(t, bin, []string{inPcap}, classifyFlags...)
	nflogConns := classify(t, bin, []string{nflogPcap}, classifyFlags...)
	agentConns := classify(t, bin, []string{agentPcap}, classifyFlags...)
	checkCapture(t, "tcpdump capture", inConns)
	checkCapture(t, "NFLOG capture", nflogConns)
	checkCapture(t, "agent's file", agentConns)
	compareCaptures(t, "NFLOG capture", inConns, nflogConns)
	compareCaptures(t, "agent's file", inConns, agentConns)
	logTable(t, inConns, nflogConns, agentConns)

	if *update && !t.Failed() {
		l.writeTestdata(bin, []bundle{
			{testdataDir, inPcap, "pcap", ".pcap", inConns},
			{testdataNFLOGDir, nflogPcap, "pcapng", ".pcapng", nflogConns},
			{testdataAgentDir, agentPcap, "pcapng", ".pcapng", agentConns},
		})
	}
}

// installMiddleboxes installs the netfilter rules of scenarios ss: the
// router's (routerRules) and the clients' own, only ever inside the lab's
// namespaces.
func (l *lab) installMiddleboxes(ss []*scenario) {
	t := l.t
	t.Helper()
	for _, rule := range routerRules(ss) {
		l.router.Must(t, append([]string{"iptables"}, rule...)...)
		l.router.Must(t, append([]string{"ip6tables"}, rule...)...)
	}
	for _, s := range ss {
		for _, rule := range s.clientRules {
			l.client.Must(t, append([]string{"iptables"}, rule...)...)
		}
	}
}

// startServers starts what scenarios ss talk to: server.py on their ports
// in the server namespace, openssl s_server for the HTTPS scenario, and
// the injector in the router. It returns a function that waits until all
// three are ready (generous waits: python starts slowly on a busy
// machine), so that a test can start other things meanwhile.
func (l *lab) startServers(ss []*scenario) (ready func()) {
	t := l.t
	t.Helper()
	var ports []string
	for _, s := range ss {
		switch {
		case s.port == httpsPort:
		case s.serverDelay > 0:
			ports = append(ports, fmt.Sprintf("%d:%d", s.port, s.serverDelay))
		default:
			ports = append(ports, strconv.Itoa(s.port))
		}
	}
	srv := l.start("server", l.server, append([]string{l.python, filepath.Join(scriptDir, "server.py")}, ports...)...)
	cert, key := l.selfSignedCert()
	tls := l.start("https-server", l.server, "openssl", "s_server", "-www", "-accept", strconv.Itoa(httpsPort),
		"-cert", cert, "-key", key)
	inj := l.start("injector", l.router, l.python, filepath.Join(scriptDir, "injector.py"), l.injectorConfig(ss))
	return func() {
		t.Helper()
		srv.WaitOutput(t, "ready", 30*time.Second)
		tls.WaitOutput(t, "ACCEPT", 30*time.Second)
		inj.WaitOutput(t, "ready", 30*time.Second)
	}
}

// drive makes the traffic of scenarios ss, all at once, and fails the test
// (without stopping it) for each scenario whose tool failed.
func (l *lab) drive(ss []*scenario) {
	t := l.t
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(ss))
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.drive(l, s)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("scenario %s: %v", ss[i].name, err)
		}
	}
	t.Logf("%d scenarios ran in %v", len(ss), time.Since(start).Round(time.Millisecond))
}
