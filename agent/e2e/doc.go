// Package e2e holds the kernel tests of `connscope agent`: the agent
// binary, built by the tests, runs as a process inside network namespaces
// the tests make (cs-agent-<random>), against the real kernel's
// netfilter, NFLOG and TCP stack. It has no code of its own besides this
// comment: everything is in the _test.go files.
//
// What they check: the exact rule set (iptables-save of both backends and
// both families) after install, after an external flush, after SIGTERM,
// after SIGKILL and a restart, after `connscope agent cleanup`, with two
// agents side by side, and when a second agent finds its NFLOG group busy;
// that the pcapng file sink holds the first packets of each connection
// and classifies as the traffic was made; that a sink that is down costs
// only counted drops in bounded memory and shipping resumes when a
// receiver appears; that the sampled share at probability 0.1 is within
// binomial bounds; and, end to end, that `connscope classify` gives the
// same result per connection on the agent's file as on a tcpdump capture
// of the same real traffic (curl, an SO_LINGER abort, hping3).
//
// They need root and skip, saying so, when not root or when
// CONNSCOPE_SKIP_ROOT_TESTS=1. They never touch the machine's own
// netfilter or send traffic outside their namespaces: the agent and every
// iptables program run under nsenter --net=/run/netns/<name>, and the
// tests' own sockets are created on a thread switched into the namespace.
// TestMain reads (never writes) the machine's own tables before and after
// and fails if anything of connscope appeared or vanished there. Each
// test removes its namespaces and kills the processes it started, by PID,
// also when it fails.
package e2e
