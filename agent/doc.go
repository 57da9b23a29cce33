// Package agent is the node sampler that `connscope agent` runs: on each
// node (a DaemonSet pod with hostNetwork and NET_ADMIN) or on a server
// without Kubernetes, it installs one sampling policy's netfilter rules,
// reads the packets they log, and ships their headers to a sink.
//
// What Run does, in order:
//  1. checks the whole Config (Validate) and reads the gRPC sink's token
//     file, and fails, naming the flag, before anything else;
//  2. listens on the metrics address, chooses the iptables backend (which
//     only reads iptables-save), refuses to start when another connscope
//     policy's rules use its label bit or NFLOG group (rules.Manager.Conflicts),
//     and opens the sink;
//  3. binds the NFLOG group, before any rule exists, so that no logged
//     packet is lost to a missing reader and a group that another reader
//     holds fails the start with nothing installed;
//  4. installs the rules (package rules), removes what an earlier run of
//     the same policy name left, and every resync period checks them
//     (the canary) and restores them when someone flushed or edited them;
//  5. decodes each logged packet into a packet.Record (IP and TCP header
//     fields only: nothing beyond the TCP header is kept), straight into
//     the free cells of a bounded queue towards the sink, and queues each
//     kernel batch's records together. While the queue is full it waits
//     for room before it reads on, so that when the sink is slower than
//     the traffic (a small CPU limit, a sink that is down) the rest waits
//     in the socket's receive buffer, and what overflows it is lost in the
//     kernel and counted from NFLOG's sequence numbers;
//  6. on ctx's end (SIGTERM, SIGINT): removes its rules, reads what the
//     kernel still held for the group, closes it, and flushes the queue to
//     the sink for at most Config.ShutdownTimeout.
//
// Ready (and /readyz) is true while the rules are in place as of the last
// check, the group is bound, and the sink has not been failing for longer
// than Config.SinkUnreadyAfter. /healthz answers while the process lives.
// /metrics serves the counters listed in metrics.go from a registry of the
// agent's own (no global registration).
//
// What it does not do: decide which policy a node runs or allocate label
// bits and NFLOG groups (the controller does), classify anything (the
// classifier does), or change a packet: the rules only label and log, so
// traffic flows as before when the agent dies, with or without its rules.
//
// Netfilter facts the operator should know: the connbytes match in the
// log rule turns on conntrack accounting in the network namespace for good
// (see package rules); one socket per NFLOG group per namespace, so two
// agents, or an old and a new pod of a DaemonSet update, cannot share a
// group (DaemonSets use maxSurge 0).
//
// # Configuration
//
// Config has one flag per setting (AddFlags) and the same settings in a
// YAML or JSON file (--config, LoadFile) whose keys are Config's JSON
// names; flags given on the command line override the file (Resolve).
// See config_yaml.go for the YAML that is understood.
package agent
