package scenarios

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Stages, tags and signatures: the exact strings of method.md §4–6.
const (
	postSYN     = "post_syn"
	postACK     = "post_ack"
	postPSH     = "post_psh"
	laterInFlow = "later_in_flow"
	noMatch     = "no_match"

	sigSYNNone          = "SYN → ∅"
	sigSYNRST           = "SYN → RST"
	sigACKNone          = "SYN; ACK → ∅"
	sigACKRST           = "SYN; ACK → RST"
	sigACKRSTACK        = "SYN; ACK → RST+ACK"
	sigPSHNone          = "PSH+ACK → ∅"
	sigPSHRST           = "PSH+ACK → RST"
	sigPSHRSTACK        = "PSH+ACK → RST+ACK"
	sigPSHRSTAndRSTACK  = "PSH+ACK → RST; RST+ACK"
	sigPSHRSTACKs       = "PSH+ACK → RST+ACK; RST+ACK"
	sigPSHRSTsSame      = "PSH+ACK → RST = RST"
	sigPSHRSTsDiff      = "PSH+ACK → RST ≠ RST"
	sigPSHRSTsZero      = "PSH+ACK → RST; RST0"
	sigLaterRSTACK      = "PSH+ACK; Data → RST+ACK"
	excludedMultipleSYN = "multiple_syn"
)

// idleTimeout is the idle timeout the test classifies with (method.md §3;
// the classifier's default is 3 s). The test leaves more than this much
// silence after the last scenario packet, and then makes one last connection
// (the marker), so that every silent connection is judged a timeout and none
// is left incomplete. It is longer than the default so that a machine busy
// enough to stall a process for seconds (2 cores shared with builds and
// fuzzers) cannot split a connection into a timeout and ignored late packets.
const idleTimeout = 10 * time.Second

// want is the classification a scenario expects for each of its connections.
type want struct {
	Stage     string   `json:"stage"`
	Tags      []string `json:"tags"`
	Signature string   `json:"signature"`
	Excluded  string   `json:"excluded"`
}

// Router behaviours, applied to one server port by iptables in the router
// namespace (routerRules).
const (
	routerForward       = ""                // forward everything
	routerDropSYNACK    = "drop-synack"     // lose the server's SYN-ACKs
	routerPassFirstData = "pass-first-data" // forward the first data packet ("GET "), then drop the flow both ways
	routerDropFrom      = "drop-from"       // drop the flow from the packet holding dropString on, both ways
)

// reset is one forged reset: flags "R" or "RA", and its ack field ("data":
// the data packet's ack number, "data+N", or a literal number, e.g. 0).
type reset struct {
	Flags string
	Ack   any
}

// scenario is one kind of connection made by a real tool, with what the
// server must see of it.
type scenario struct {
	name string
	// group names the bundled capture files (testdata/<group>.pcap) that
	// hold the scenario's connections.
	group string
	port  int  // server port: the test tells scenarios apart by it
	v6    bool // the client talks to the server's IPv6 address
	// count is how many connections the scenario makes.
	count int
	// why says which rules of method.md give want.
	why  string
	want want

	router     string // routerForward, routerDropSYNACK, ...
	dropString string // for routerDropFrom
	// inject, when set, makes the injector in the router forge these resets
	// towards the server when it sees the flow's first data packet; injectSeq
	// is "next" (data seq + length: the router forwarded the data) or "data"
	// (the data packet's seq: the router dropped it).
	inject    []reset
	injectSeq string
	// clientRules are iptables rules (filter table) for the client namespace.
	clientRules [][]string
	// serverDelay is how many seconds server.py waits before each response
	// on this port.
	serverDelay int

	drive func(l *lab, s *scenario) error
}

// The injector's forged packets carry this TTL / hop limit. The client's
// packets reach the server with 63 (64 less the router's hop); 50 is what a
// middlebox a few hops away would leave, so ttl_jump must show.
const injectTTL = 50

// serverAddr is the server's address the scenario talks to.
func (s *scenario) serverAddr() string {
	if s.v6 {
		return serverV6
	}
	return serverV4
}

// url is the scenario's plain HTTP URL.
func (s *scenario) url() string {
	return "http://" + netip.AddrPortFrom(netip.MustParseAddr(s.serverAddr()), uint16(s.port)).String() + "/"
}

// The ports of the two scenarios that need servers of their own; every other
// port is served by hack/scenarios/server.py.
const (
	httpsPort  = 8443
	markerPort = 8099
)

// scenarios is the scenario table. Each expectation is derived from
// shared/design/method.md; the comment (why) names the rule.
var scenarios = []*scenario{
	// --- Clients that close normally.
	{
		name: "curl-http", group: "clients", port: 8001, count: 1,
		why:   "curl reads the response and closes with a FIN; no RST among the counted packets: fin-only close, not anomalous (§3), so no_match, no tag, no signature (§4, §6)",
		want:  want{Stage: noMatch},
		drive: curlDrive(0),
	},
	{
		name: "curl-http-v6", group: "clients", port: 8002, v6: true, count: 1,
		why:   "as curl-http, over IPv6",
		want:  want{Stage: noMatch},
		drive: curlDrive(0),
	},
	{
		name: "curl-https", group: "clients", port: httpsPort, count: 1,
		why: "TLS to openssl s_server -www, which answers HTTP/1.0 and closes first; the client sends about 12 packets " +
			"(handshake, request, ACKs of a multi-segment page, FIN) and no RST: cap (or FIN), not anomalous (§3), so no_match",
		want: want{Stage: noMatch},
		drive: func(l *lab, s *scenario) error {
			_, err := l.run(10*time.Second, l.client, "curl", "-sS", "-k", "-o", "/dev/null", "--max-time", "5",
				fmt.Sprintf("https://%s:%d/", serverV4, s.port))
			return err
		},
	},

	// --- Clients that abort with SO_LINGER 0: the kernel sends one RST+ACK,
	// with the TTL and next IP ID of the connection's own packets (no jumps).
	{
		name: "linger-handshake", group: "clients", port: 8010, count: 1,
		why:   "SYN, ACK, RST+ACK: reset with no data packet before it is post_ack (§4); one RST+ACK and no RST: single_rstack (§5); signature SYN; ACK → RST+ACK (§6)",
		want:  want{Stage: postACK, Tags: []string{"reset", "single_rstack"}, Signature: sigACKRSTACK},
		drive: lingerDrive(0),
	},
	{
		name: "linger-handshake-v6", group: "clients", port: 8011, v6: true, count: 1,
		why:   "as linger-handshake, over IPv6",
		want:  want{Stage: postACK, Tags: []string{"reset", "single_rstack"}, Signature: sigACKRSTACK},
		drive: lingerDrive(0),
	},
	{
		name: "linger-response-acked", group: "clients", port: 8012, count: 1,
		why: "SYN, ACK, PSH+ACK, ACK (of the one-segment response, forced out with TCP_QUICKACK), RST+ACK: one data packet before the RST is post_psh (§4), " +
			"single_rstack (§5); the RST+ACK is not immediately after the first PSH+ACK (an ACK is between), which §6 gives the Later signature " +
			"PSH+ACK; Data → RST+ACK (\"one or more RSTs, not immediately after the first PSH+ACK\"; classify's package doc)",
		want:  want{Stage: postPSH, Tags: []string{"reset", "single_rstack"}, Signature: sigLaterRSTACK},
		drive: lingerDrive(1),
	},
	{
		name: "linger-request", group: "clients", port: 8013, count: 1,
		why: "SYN, ACK, PSH+ACK, RST+ACK: the client aborts right after its request, and the server on this port answers only after 5 s, " +
			"so no response (and no ACK of one) comes before the RST+ACK: post_psh (§4), single_rstack (§5), PSH+ACK → RST+ACK (§6)",
		want:        want{Stage: postPSH, Tags: []string{"reset", "single_rstack"}, Signature: sigPSHRSTACK},
		serverDelay: 5,
		drive:       lingerDrive(-1),
	},
	{
		name: "linger-response-ack-lost", group: "clients", port: 8016, count: 1,
		why: "as linger-response-acked, but the client namespace drops the client's pure ACKs after the handshake, so the ACK of the response is lost: " +
			"SYN, ACK, PSH+ACK, RST+ACK: post_psh (§4), single_rstack (§5), PSH+ACK → RST+ACK (§6). The lost ACK had taken an IP ID, so the RST+ACK's " +
			"IP ID is the request's + 2: ipid_jump (§5: 'more than 1'), without any injection: one lost client packet is enough",
		want: want{Stage: postPSH, Tags: []string{"reset", "single_rstack", "ipid_jump"}, Signature: sigPSHRSTACK},
		clientRules: [][]string{{"-A", "OUTPUT", "-p", "tcp", "--dport", "8016", "--tcp-flags", "ALL", "ACK",
			"-m", "connbytes", "--connbytes", "4:", "--connbytes-dir", "original", "--connbytes-mode", "packets", "-j", "DROP"}},
		drive: lingerDrive(1),
	},
	{
		name: "linger-three-requests", group: "clients", port: 8014, count: 1,
		why: "SYN, ACK, then three times PSH+ACK and ACK, then RST+ACK (9 packets, under the cap of 10): two or more data packets before the RST is later_in_flow (§4), " +
			"single_rstack (§5), PSH+ACK; Data → RST+ACK (§6)",
		want:  want{Stage: laterInFlow, Tags: []string{"reset", "single_rstack"}, Signature: sigLaterRSTACK},
		drive: lingerDrive(3),
	},

	// --- SYN probes and scanners. The server answers with a SYN-ACK; the
	// client's kernel, which has no socket for it, answers with one RST
	// (ACK clear, ack 0, seq = the SYN-ACK's ack, IP ID 0). Only masscan
	// sends an RST of its own as well.
	{
		name: "hping3-syn", group: "scanners", port: 8020, count: 3,
		why: "hping3 -S from three source ports: SYN then the kernel's RST: post_syn (§4), single_rst (§5), SYN → RST (§6). hping3's SYN is TTL 64 like the kernel's RST, " +
			"and the kernel's RST has IP ID 0, so no ttl_jump or ipid_jump; window 64 and no options: no scanner tag",
		want:  want{Stage: postSYN, Tags: []string{"reset", "single_rst"}, Signature: sigSYNRST},
		drive: hpingDrive(41000),
	},
	{
		name: "hping3-syn-no-rst", group: "scanners", port: 8021, count: 3,
		why:         "as hping3-syn, but the client namespace drops its own outgoing RSTs: only the SYN, then silence: post_syn timeout (§3, §4), SYN → ∅ (§6)",
		want:        want{Stage: postSYN, Tags: []string{"timeout"}, Signature: sigSYNNone},
		clientRules: [][]string{{"-A", "OUTPUT", "-p", "tcp", "--dport", "8021", "--tcp-flags", "RST", "RST", "-j", "DROP"}},
		drive:       hpingDrive(42000),
	},
	{
		name: "zmap", group: "scanners", port: 8030, count: 1,
		why: "ZMap 2.1.1 SYN (IP ID 54321, window 65535) then the kernel's RST: post_syn, single_rst, SYN → RST, and zmap (§5). ZMap's TTL 255 differs from the RST's, " +
			"but the packet before the RST is the SYN of a scanner-tagged connection, so no ttl_jump (§5)",
		want:  want{Stage: postSYN, Tags: []string{"reset", "single_rst", "zmap"}, Signature: sigSYNRST},
		drive: zmapDrive,
	},
	{
		name: "nmap", group: "scanners", port: 8031, count: 1,
		why:   "nmap -sS SYN (window 1024, MSS only, DF clear) then the kernel's RST: post_syn, single_rst, SYN → RST, nmap; no ttl_jump after a scanner's SYN (§5)",
		want:  want{Stage: postSYN, Tags: []string{"reset", "single_rst", "nmap"}, Signature: sigSYNRST},
		drive: nmapDrive,
	},
	{
		name: "masscan", group: "scanners", port: 8032, count: 1,
		why: "masscan SYN (window 1024, TTL 255, IP ID = server IP ^ port ^ seq: masscan, §5), then two RSTs with ack 0: the kernel's at once (TTL 64, IP ID 0) " +
			"and masscan's own, sent by its user-space stack ~0.1-0.7 s later (TTL 255, window 1200, IP ID = server IP ^ port ^ (seq+1)). post_syn (§4); " +
			"two RSTs, ACK clear, all acks zero: multiple_rsts, acknumsame0 (§5); no ttl_jump: the packet before each RST is a scanner's SYN (§5); " +
			"no ipid_jump: with --seed 1 the SYN's seq (2304801874) is even, so masscan's RST's IP ID is the SYN's + 1 (an odd seq gives + 3 or more, " +
			"and ipid_jump: §5 exempts scanners from ttl_jump only); Post-SYN has one signature for any number of RSTs: SYN → RST (§6)",
		want:  want{Stage: postSYN, Tags: []string{"reset", "multiple_rsts", "acknumsame0", "masscan"}, Signature: sigSYNRST},
		drive: masscanDrive,
	},

	// --- Middleboxes that drop.
	{
		name: "blackhole-host", group: "middleboxes", port: 8040, count: 1,
		why: "the router drops the request carrying the forbidden Host and every later packet of the flow (string match + CONNMARK): the server sees SYN and one ACK, then silence: " +
			"post_ack timeout (§3, §4), SYN; ACK → ∅ (§6)",
		want:   want{Stage: postACK, Tags: []string{"timeout"}, Signature: sigACKNone},
		router: routerDropFrom, dropString: "Host: blocked.example",
		drive: curlDrive(5, "-H", "Host: blocked.example"),
	},
	{
		name: "first-data-only", group: "middleboxes", port: 8041, count: 1,
		why:    "the router lets the first data packet through and drops the flow after it: SYN, ACK, PSH+ACK, then silence: post_psh timeout (§3, §4), PSH+ACK → ∅ (§6)",
		want:   want{Stage: postPSH, Tags: []string{"timeout"}, Signature: sigPSHNone},
		router: routerPassFirstData,
		drive:  curlDrive(5),
	},
	{
		name: "synack-loss", group: "middleboxes", port: 8042, count: 1,
		why: "the router loses the SYN-ACK and the client namespace drops the kernel's SYN retransmissions (the SYN is lost, like the SYN-ACK, " +
			"independent of when curl gives up): one SYN, then silence: post_syn timeout (§3, §4), SYN → ∅ (§6)",
		want:   want{Stage: postSYN, Tags: []string{"timeout"}, Signature: sigSYNNone},
		router: routerDropSYNACK,
		// The first SYN marks the connection; a SYN of a marked connection (a
		// retransmission) is dropped. connbytes cannot tell: conntrack does
		// not count retransmitted SYNs.
		clientRules: [][]string{
			{"-A", "OUTPUT", "-p", "tcp", "--dport", "8042", "--syn", "-m", "connmark", "--mark", "1", "-j", "DROP"},
			{"-A", "OUTPUT", "-p", "tcp", "--dport", "8042", "--syn", "-j", "CONNMARK", "--set-mark", "1"},
		},
		drive: curlConnectTimeoutDrive("2"),
	},
	{
		name: "synack-loss-retry", group: "middleboxes", port: 8043, count: 1,
		why:    "the router loses the SYN-ACK; curl waits 2.5 s and the kernel retransmits the SYN at 1 s (and 3 s), so the server sees two or more SYNs: excluded multiple_syn (§2), no stage, no tag",
		want:   want{Excluded: excludedMultipleSYN},
		router: routerDropSYNACK,
		drive:  curlConnectTimeoutDrive("2.5"),
	},

	// --- An on-path injector (hack/scenarios/injector.py in the router)
	// forges resets towards the server after the client's request; the router
	// forwards the request and then drops the flow, so only the forged resets
	// end it. Forged packets have TTL 50 (client's: 63 at the server) and an
	// IP ID 20000 away from the client's: ttl_jump and ipid_jump (§5).
	{
		name: "inject-rst", group: "injectors", port: 8050, count: 1,
		why:    "SYN, ACK, PSH+ACK, RST: post_psh (§4), single_rst (§5), PSH+ACK → RST (§6), ttl_jump, ipid_jump",
		want:   want{Stage: postPSH, Tags: []string{"reset", "single_rst", "ttl_jump", "ipid_jump"}, Signature: sigPSHRST},
		router: routerPassFirstData, inject: []reset{{"R", "data"}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rstack", group: "injectors", port: 8051, count: 1,
		why:    "SYN, ACK, PSH+ACK, RST+ACK: post_psh, single_rstack, PSH+ACK → RST+ACK, ttl_jump, ipid_jump",
		want:   want{Stage: postPSH, Tags: []string{"reset", "single_rstack", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTACK},
		router: routerPassFirstData, inject: []reset{{"RA", "data"}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rsts-same", group: "injectors", port: 8052, count: 1,
		why:    "three RSTs with the same non-zero ack: multiple_rsts, acknumsame (§5), PSH+ACK → RST = RST (§6)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "multiple_rsts", "acknumsame", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTsSame},
		router: routerPassFirstData, inject: []reset{{"R", "data"}, {"R", "data"}, {"R", "data"}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rsts-diff", group: "injectors", port: 8053, count: 1,
		why:    "three RSTs with different non-zero acks: multiple_rsts, acknumdiff (§5), PSH+ACK → RST ≠ RST (§6)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "multiple_rsts", "acknumdiff", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTsDiff},
		router: routerPassFirstData, inject: []reset{{"R", "data"}, {"R", "data+1460"}, {"R", "data+2920"}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rsts-diff0", group: "injectors", port: 8054, count: 1,
		why:    "three RSTs, acks not all equal and one zero: multiple_rsts, acknumdiff0 (§5), PSH+ACK → RST; RST0 (§6)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "multiple_rsts", "acknumdiff0", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTsZero},
		router: routerPassFirstData, inject: []reset{{"R", "data"}, {"R", "data+1460"}, {"R", 0}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rsts-zero", group: "injectors", port: 8055, count: 1,
		why: "three RSTs, all acks zero: multiple_rsts, acknumsame0 (§5). Signature PSH+ACK → RST = RST (§6: \"more than one RST, same ACK numbers\"; " +
			"RST ≠ RST and RST; RST0 are for ack numbers that change, and all-zero acks do not change; classify's package doc)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "multiple_rsts", "acknumsame0", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTsSame},
		router: routerPassFirstData, inject: []reset{{"R", 0}, {"R", 0}, {"R", 0}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rst-rstack", group: "injectors", port: 8056, count: 1,
		why:    "an RST and an RST+ACK: rst_and_rstacks (§5), PSH+ACK → RST; RST+ACK (§6)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "rst_and_rstacks", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTAndRSTACK},
		router: routerPassFirstData, inject: []reset{{"R", "data"}, {"RA", "data"}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "inject-rstacks", group: "injectors", port: 8057, count: 1,
		why:    "two RST+ACKs: multiple_rstacks (§5), PSH+ACK → RST+ACK; RST+ACK (§6)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "multiple_rstacks", "ttl_jump", "ipid_jump"}, Signature: sigPSHRSTACKs},
		router: routerPassFirstData, inject: []reset{{"RA", "data"}, {"RA", "data"}}, injectSeq: "next",
		drive: curlDrive(5),
	},
	{
		name: "drop-data-inject-rst", group: "injectors", port: 8058, count: 1,
		why: "the router drops the request (and the flow after it) and the injector sends one RST with the request's seq: the server sees SYN, ACK, RST: " +
			"post_ack (§4), single_rst, SYN; ACK → RST; the RST's TTL and IP ID are far from the handshake ACK's: ttl_jump, ipid_jump",
		want:   want{Stage: postACK, Tags: []string{"reset", "single_rst", "ttl_jump", "ipid_jump"}, Signature: sigACKRST},
		router: routerDropFrom, dropString: "GET ", inject: []reset{{"R", "data"}}, injectSeq: "data",
		drive: curlDrive(5),
	},
	{
		name: "inject-rst-v6", group: "injectors", port: 8059, v6: true, count: 1,
		why:    "as inject-rst over IPv6: hop limit 50 against the client's 63 gives ttl_jump; IPv6 has no IP ID, so no ipid_jump (§5)",
		want:   want{Stage: postPSH, Tags: []string{"reset", "single_rst", "ttl_jump"}, Signature: sigPSHRST},
		router: routerPassFirstData, inject: []reset{{"R", "data"}}, injectSeq: "next",
		drive: curlDrive(5),
	},

	// The marker: made last, more than the idle timeout after every other
	// scenario, so the input's clock has passed their silences. A FIN close:
	// no_match.
	{
		name: "marker", group: "marker", port: markerPort, count: 1,
		why:   "the last connection: curl, FIN close, no_match (§3, §4)",
		want:  want{Stage: noMatch},
		drive: curlDrive(0),
	},
}

// curlDrive returns a drive that fetches the scenario's URL with curl.
// maxTime 0 expects a normal exchange; otherwise curl runs at most maxTime
// seconds and must time out (exit 28), because a middlebox stops the flow.
// maxTime is generous: on a busy machine curl has been seen to take two
// seconds between the handshake and its request.
func curlDrive(maxTime int, extra ...string) func(l *lab, s *scenario) error {
	return func(l *lab, s *scenario) error {
		args := append([]string{"curl", "-sS", "-g", "-o", "/dev/null"}, extra...)
		if maxTime == 0 {
			_, err := l.run(10*time.Second, l.client, append(args, "--max-time", "5", s.url())...)
			return err
		}
		args = append(args, "--max-time", strconv.Itoa(maxTime), s.url())
		// The kill after maxTime+20 s is for a hung curl only: on a machine
		// at load 40, curls of --max-time 5 have taken 10 s to end.
		_, err := l.runExit(time.Duration(maxTime+20)*time.Second, l.client, []int{28}, args...)
		return err
	}
}

// curlConnectTimeoutDrive returns a drive whose curl gives up connecting
// after seconds (it must: the router loses the SYN-ACKs).
func curlConnectTimeoutDrive(seconds string) func(l *lab, s *scenario) error {
	return func(l *lab, s *scenario) error {
		_, err := l.runExit(10*time.Second, l.client, []int{28},
			"curl", "-sS", "-g", "-o", "/dev/null", "--connect-timeout", seconds, s.url())
		return err
	}
}

// lingerDrive returns a drive that runs hack/scenarios/linger_client.py;
// requests -1 sends one request and aborts without waiting for the response.
func lingerDrive(requests int) func(l *lab, s *scenario) error {
	return func(l *lab, s *scenario) error {
		_, err := l.run(20*time.Second, l.client, l.python, filepath.Join(scriptDir, "linger_client.py"),
			s.serverAddr(), strconv.Itoa(s.port), strconv.Itoa(requests))
		return err
	}
}

// hpingDrive returns a drive that sends one SYN with hping3 from each of the
// source ports base, base+1 and base+2. One hping3 per SYN: `hping3 -c 3`
// stops after three replies, and the server's retransmitted SYN-ACKs count
// as replies, so it may send fewer than three SYNs.
func hpingDrive(base int) func(l *lab, s *scenario) error {
	return func(l *lab, s *scenario) error {
		for port := base; port < base+3; port++ {
			// hping3 exits 1 when no reply came back; replies do not matter here.
			if _, err := l.runExit(10*time.Second, l.client, []int{1}, "hping3", "-q", "-S", "-c", "1",
				"-s", strconv.Itoa(port), "-p", strconv.Itoa(s.port), serverV4); err != nil {
				return err
			}
		}
		return nil
	}
}

// zmapDrive scans the server's port once with ZMap. ZMap refuses private
// targets unless given an (empty) blocklist, and needs the gateway's MAC.
func zmapDrive(l *lab, s *scenario) error {
	blocklist := filepath.Join(l.dir, "zmap-blocklist")
	if err := os.WriteFile(blocklist, nil, 0o644); err != nil {
		return err
	}
	// ZMap 2.1.1 now and then aborts on a one-address target while it
	// builds its address permutation, before it sends anything
	// ("constraint_lookup_index: Assertion `index < con->root->count'
	// failed", seen once in ~20 runs): run it again then. Should it ever
	// abort after sending, the extra connection fails the scenario's count.
	var err error
	for range 3 {
		_, err = l.run(30*time.Second, l.client, "zmap", "-q", "--disable-syslog", "-p", strconv.Itoa(s.port),
			"-i", clientIf, "-S", clientV4, "-G", routerClientMAC, "-b", blocklist, "-r", "100", "-P", "1", "-c", "1",
			"-o", filepath.Join(l.dir, "zmap.out"), serverV4+"/32")
		if err == nil || !strings.Contains(err.Error(), "constraint_lookup_index") {
			return err
		}
	}
	return err
}

// nmapDrive SYN-scans the server's port once with nmap: no host discovery
// (-Pn, which would probe ports 80 and 443), no DNS, no retransmission.
func nmapDrive(l *lab, s *scenario) error {
	_, err := l.run(30*time.Second, l.client, "nmap", "-sS", "-Pn", "-n", "--max-retries", "0",
		"-e", clientIf, "-p", strconv.Itoa(s.port), serverV4)
	return err
}

// masscan's source port and seed are fixed so that its SYN's sequence number
// (a keyed hash of the addresses, ports and seed) and so its IP IDs are the
// same in every run.
const (
	masscanSourcePort = 40000
	masscanSeed       = 1
)

// masscanDrive SYN-scans the server's port once with masscan, which needs the
// adapter's settings spelled out. It waits 2 s for replies: masscan answers
// the SYN-ACK with an RST of its own within that time.
func masscanDrive(l *lab, s *scenario) error {
	_, err := l.run(30*time.Second, l.client, "masscan", serverV4, "-p"+strconv.Itoa(s.port),
		"--adapter", clientIf, "--adapter-ip", clientV4, "--adapter-mac", clientMAC,
		"--router-mac", routerClientMAC, "--source-port", strconv.Itoa(masscanSourcePort), "--seed", strconv.Itoa(masscanSeed),
		"--rate", "100", "--wait", "2")
	return err
}
