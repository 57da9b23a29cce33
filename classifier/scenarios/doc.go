// Package scenarios holds end-to-end tests of the classification on real
// traffic. It has no code of its own besides this comment: everything is in
// the _test.go files.
//
// TestScenarios (root, Linux, the tools of hack/setup-scenarios.sh) builds
// three network namespaces, client -- router -- server, joined by veth pairs
// with private test addresses (10.231.1.0/24 and 10.231.2.0/24,
// fd00:c5:1::/64 and fd00:c5:2::/64). Real tools make the traffic: curl,
// openssl, python clients that abort with SO_LINGER 0, hping3, zmap, nmap and
// masscan; the router drops packets with iptables rules and a scapy injector
// forges resets, as middleboxes do. What the server receives is captured
// three times at once: by tcpdump on the server's interface; by the seed's
// two iptables rules (connlabel at probability 1, NFLOG of the first 10
// packets) read by tshark; and by `connscope agent` (probability 1, 10
// packets, its own label bit, NFLOG group and chain beside the seed's rules)
// with its pcapng file sink. The agent is started before the traffic, once
// its rules are in place, and stopped with SIGTERM after it; it must exit 0,
// lose nothing and leave none of its rules. All three captures are
// classified with `connscope classify`: every connection must match the
// expectation its scenario derives from shared/design/method.md, and the
// NFLOG capture and the agent's file must classify each connection as the
// tcpdump capture does. Traffic goes only to addresses of the namespaces the
// test made; the test removes them and the processes it started, also on
// failure, and never touches the machine's own netfilter rules.
//
// TestScenarioCaptures needs no root: it classifies the captures of a passing
// run checked in under testdata/ and compares them with their golden files.
package scenarios
