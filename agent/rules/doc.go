// Package rules installs, keeps and removes the netfilter rules of a
// connscope sampling policy: the seed's two iptables rules, which label a
// random sample of new TCP connections with a conntrack label and send
// the first packets of each labelled connection to an NFLOG group.
//
// It does not read NFLOG (package nflog does), decide which policy a node
// runs, or talk to Kubernetes. It only labels and logs: no rule of it
// ACCEPTs, DROPs or changes a packet, so traffic flows as before when the
// agent dies with its rules in place.
//
// # Chains
//
// Everything lives in the mangle table, in one chain per policy, reached
// by one jump from mangle PREROUTING. For a policy "web" (label bit 3,
// NFLOG group 5, 10 packets, 128 bytes, ports 80 and 443, one excluded
// network, interface eth0) iptables-save shows:
//
//	:CONNSCOPE-JNPFP5XL-3VHNCQUJ - [0:0]
//	-A PREROUTING -p tcp -m connbytes --connbytes 0:10 --connbytes-mode packets --connbytes-dir original -m comment --comment "connscope policy web: sample new TCP connections" -j CONNSCOPE-JNPFP5XL-3VHNCQUJ
//	-A CONNSCOPE-JNPFP5XL-3VHNCQUJ -s 10.0.0.0/8 -m comment --comment "connscope policy web: never sample excluded clients" -j RETURN
//	-A CONNSCOPE-JNPFP5XL-3VHNCQUJ -i eth0 -p tcp -m multiport --dports 80,443 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m statistic --mode random --probability 0.00009999983 -m connlabel --label "3" --set -m comment --comment "connscope policy web: label a sample of new TCP connections"
//	-A CONNSCOPE-JNPFP5XL-3VHNCQUJ -m connlabel --label "3" -m conntrack --ctdir ORIGINAL -m connbytes ! --connbytes 11 --connbytes-mode packets --connbytes-dir original -m comment --comment "connscope policy web: log the first 10 client packets of sampled connections" -j NFLOG --nflog-group 5 --nflog-size 128
//
// Why this shape:
//   - Own chains, one commented jump (as kube-proxy, Calico, Cilium): our
//     rules can be listed, compared, flushed and deleted as a unit without
//     parsing anyone else's, and the comment says who wrote the jump.
//   - The chain name is CONNSCOPE-<8 characters hashed from the policy
//     name>-<8 hashed from name, label bit and NFLOG group>: 27 characters
//     (iptables allows 28). The first part finds every chain a policy name
//     ever had; the second keeps a policy whose bit or group changed apart
//     from its earlier self.
//   - The jump carries -p tcp so that other traffic costs one match, and
//     connbytes 0:N (packets, original direction) so that only a
//     connection's first N client packets (and the replies sent
//     meanwhile) enter the chain: nothing after them can be labelled (a
//     new connection's SYN is its first packet: conntrack counts it
//     before mangle PREROUTING) or logged (the log rule's own connbytes
//     stops at N), so the method is unchanged, while the bulk of every
//     established connection, the packets that matter for throughput,
//     costs one rule with two matches instead of the chain's rules
//     (TestOnlyTheFirstPacketsOfAConnectionEnterTheChain; the datapath
//     benchmark measures it). It is inserted at the top of PREROUTING: a
//     rule above it that ACCEPTs would hide packets from the sampler, and
//     as our rules never end a packet's walk, being first changes nothing
//     for the rules below.
//   - Filters gate the labelling only: excluded clients RETURN first, the
//     interfaces (-i, one labelling rule per interface) and server ports
//     (multiport, at most 15) sit in the labelling rule. The log rule needs
//     no filter, as it matches only connections we labelled.
//   - The label rule needs --set: it is the rule that makes the kernel
//     allocate label storage (nf_connlabels_get) in the namespace. Labels
//     are numbers here; /etc/xtables/connlabel.conf is not needed (iptables
//     warns that it is missing, and works).
//   - The log rule adds -m conntrack --ctdir ORIGINAL to the seed's rule.
//     PREROUTING sees both directions of forwarded and loopback traffic,
//     and connbytes counts only the client's packets, so without it the
//     server's replies would be logged too (verified on loopback) while the
//     method needs the first N client packets only.
//   - --nflog-size, not --nflog-range: the kernel ignores --nflog-range
//     (iptables-legacy stores it, iptables-nft drops it and warns) and
//     honours --nflog-size, copying the smaller of it and the reading
//     socket's copy range (verified with both backends on Linux 6.18).
//
// connbytes switches conntrack accounting (sysctl
// net.netfilter.nf_conntrack_acct, per network namespace) on for the whole
// namespace when the rule is added (the kernel's connbytes match forces
// it, with a "Forcing CT accounting to be enabled" line in the kernel
// log), and nothing switches it back off: every connection of the
// namespace opened from then on carries packet and byte counters (an
// extension of 32 bytes, two counter updates per packet), whether it is
// sampled or not. The agent runs in the host's namespace, so this is a
// change to the node: `conntrack -L` then shows packets= and bytes=, and a
// node that had accounting off pays for the counters. Connections that
// were open before have no counters, never jump and are never logged,
// which the SYN-only labelling makes moot.
//
// # Backends
//
// iptables 1.8 drives either nf_tables (iptables-nft) or the legacy
// x_tables (iptables-legacy); the kernel runs both, and each tool sees only
// its own rules. The rules must go where the host's other software
// (kubelet, kube-proxy, the CNI) writes, so that one iptables-save shows
// them all. Backend "auto" decides as kube-proxy's iptables-wrappers do:
// the backend whose mangle table holds kubelet's KUBE-IPTABLES-HINT or
// KUBE-KUBELET-CANARY chain; else the one with more rules; nft on a tie. A
// backend whose programs are missing or fail is never chosen; when neither
// works the error says what to install or which capability is missing.
// The programs are named explicitly (iptables-nft, ip6tables-legacy, ...),
// never the "iptables" alternative.
//
// # Keeping the rules
//
// Ensure is idempotent: it lists our chain and PREROUTING, and writes only
// when they differ from the policy (the chain flushed and refilled, the
// jump deleted and re-inserted), so running it every few seconds costs a
// few iptables runs and never duplicates a rule. After a rewrite it keeps
// iptables' own listing of the chain and compares with that later, so an
// iptables that prints a rule differently from how we render it does not
// cause a rewrite on every pass.
//
// Check is the canary: it tells, without writing, whether our chain or
// jump was flushed, removed or edited (a *DriftError). Run calls Ensure
// every resync period, which restores anything missing within one period,
// and retries failures sooner.
//
// Refilling a chain is not atomic: during the few milliseconds between the
// flush and the last append, SYNs are not sampled. Nothing is dropped.
//
// # Cleaning up
//
// Remove deletes our jumps, then our chain, carrying on past errors and
// joining them (kube-proxy's CleanupLeftovers). CleanupStale, run by Run
// once the new rules are in, removes what an earlier run of the same
// policy name left with other parameters: chains whose name starts with
// the policy's name part or whose rules carry its comment, and jumps to
// them or with its comment, in both backends and both families. CleanupAll
// removes everything of connscope, every policy, both backends and both
// families (connscope agent cleanup). Two managers with different policies
// (names, label bits, NFLOG groups) share a namespace, and each removes
// only its own rules.
//
// With iptables-nft, removing the last rule leaves the mangle PREROUTING
// base chain that iptables-nft created for the first one, and an empty base
// chain still hooks the table into every packet's path. Remove, CleanupAll
// and CleanupPolicy (and CleanupStale where the policy installs nothing)
// delete it when it is left without rules and with policy ACCEPT, which
// changes no packet's fate; iptables-nft refuses another policy, the
// kernel a chain that still has rules. iptables-legacy tables keep their
// hooks for as long as the namespace lives. Accounting, which connbytes
// turned on, stays on (see above).
//
// # Tests
//
// The tests that need a kernel run every iptables program inside a network
// namespace of their own, through Options.LookPath wrappers that run
// nsenter --net=/run/netns/<name>. Setting the test's OS thread into the
// namespace also works for programs started from that thread, but not for
// those started from any other goroutine, which would silently change the
// machine's own rules; the wrappers cannot.
package rules
