#!/usr/bin/env bash
# agent-datapath-toggle.sh is the fine-grained half of the agent's datapath
# benchmark (`make bench-agent-datapath`, after agent-datapath.sh): what the
# agent's rules cost the traffic, measured by switching them on and off
# many times within one pair of namespaces, with one agent running
# throughout, instead of comparing whole runs in fresh namespaces.
#
# Why: on this kind of machine (a VM sharing its host), two fresh
# namespace pairs can differ by 2x in iperf3 throughput with the same
# rules (agent-datapath.sh's ranges show it), while 1-second runs within
# one pair differ by a few percent. A 1 % target needs the second kind of
# comparison.
#
# For each probability in BENCH_TOGGLE_PROBABILITIES (default "0.0001 1"):
# one namespace pair (as agent-datapath.sh: veth, offloads off unless
# BENCH_OFFLOADS=on, so every 1448-byte segment meets the rules), iperf3 -s
# and hack/bench/tinyhttp in the server namespace on core BENCH_SERVER_CPU,
# conntrack on there (one conntrack-match rule in a filter-table chain
# nothing jumps to, as on any Kubernetes node), and
#
#   connscope agent --probability P --packet-cap 10 --label-bit 7
#     --nflog-group 43 --backend BACKEND --resync 1h --sink file://...
#
# on the same core. Then BENCH_TOGGLE_ROUNDS rounds; each round puts the
# namespace in each state once, in an order that alternates from round to
# round (off, on / on, off; with more states, reversed every other round),
# and in each state runs, from the client
# namespace on core BENCH_CLIENT_CPU,
#
#   iperf3 -c SERVER -t BENCH_TOGGLE_SECONDS -J     one TCP stream, receiver's rate
#   wrk -t1 -c 50 -d BENCH_TOGGLE_SECONDS -H 'Connection: close' http://SERVER:8080/
#
# The states:
#
#   off   no rule in either mangle table (IPv4, IPv6), no mangle PREROUTING
#         base chain (so no hook), and conntrack accounting off
#         (net.netfilter.nf_conntrack_acct=0): the node without connscope.
#         The agent keeps running; its chains are left empty (a chain
#         nothing jumps to costs a packet nothing).
#   on    the mangle tables restored as the agent installed them
#         (iptables-save before the first round, iptables-restore, of the backend)
#         and accounting on, as the agent leaves it: everything the agent
#         put in the packet path.
#   acct  (not in the default set) off, but accounting on: what the
#         accounting that the rules' connbytes match turns on costs by
#         itself.
#   hook  (not in the default set) an empty IPv4 mangle PREROUTING base
#         chain and accounting on: what hooking the table into PREROUTING
#         costs by itself. BENCH_TOGGLE_STATES="off acct hook on" takes
#         the cost of "on" apart.
#   twojumps  (not in the default set) "on", but with the agent's one
#         IPv4 jump (-p tcp, connbytes 0:10: every connection's first 10
#         client packets enter the chain) replaced by two: SYNs of new
#         connections, and connections with the policy's label. A what-if,
#         not what the agent installs: the issue asks for one jump.
#   nocount  (not in the default set) a what-if without connbytes, so
#         without accounting: two jumps as twojumps (the SYN jump without
#         its conntrack match), the log rule without its connbytes (every
#         packet of a labelled connection is logged; an agent would have
#         to stop it after N, e.g. by clearing the label over ctnetlink),
#         accounting off. What the rules cost when nothing counts packets.
#   native  (not in the default set; nft only) a what-if in native
#         nftables instead of iptables: the agent's rules written as nft
#         expressions (ct original packets for connbytes, numgen for
#         statistic, ct label, log group ... snaplen), in a table inet of
#         the benchmark's own hooked at mangle priority, the iptables
#         mangle tables empty and unhooked, accounting on (nft's packet
#         counter needs it as connbytes does). What the same rules cost
#         without nft_compat's x_tables matches: the agent cannot install
#         them through go-iptables, which the design chose.
#
# BENCH_TOGGLE_BACKEND=legacy runs the agent, and every rule of the
# benchmark, on iptables-legacy instead of iptables-nft. There a table's
# hooks are registered when the table is first used in a namespace and stay
# until the namespace goes, whatever its chains hold, so "off" keeps an
# empty mangle table: what a Kubernetes node on iptables-legacy has
# anyway, as kubelet keeps its canary and hint chains in that table. The
# hook state does not exist there (off already has the hook).
#
# "off" removes the agent's chains' rules, not only its jump: while its
# labelling rule exists the kernel gives every new connection of the
# namespace label storage (whichever family's table holds the rule), which
# is part of what the agent costs. The agent's resync is an hour so that it
# does not restore its rules during an "off" state; the benchmark restores
# them before the agent is stopped, and checks that it removes them all.
# Accounting is switched with the state because the kernel decides it when
# a connection is created: each run's connections are new, so each state's
# connections have that state's accounting. Before each run the script
# checks the state took (the number of rules, the hook's presence, with
# nft).
#
# Measures, per run: the rate (iperf3 bits/s, wrk requests/s, each one new
# connection) and the CPU time the traffic took (iperf3, wrk and the
# servers, from a cpuacct cgroup, kernel packet path included) per GB and
# per connection. For each round the change of each state against
# "off" in that round, then the median of the changes over the rounds and
# a distribution-free 95 % interval for it (order statistics: the sign
# test's interval). The target, at most 1 % loss at probability 0.0001, is
# shown met when the interval's high end is at most +1 %, missed when its
# low end is above +1 %, and otherwise undecided.
#
# Environment:
#   BENCH_TOGGLE_PROBABILITIES  default "0.0001 1"
#   BENCH_TOGGLE_ROUNDS         rounds per probability (default 60)
#   BENCH_TOGGLE_SECONDS        seconds of each iperf3 and of each wrk run (default 1)
#   BENCH_TOGGLE_STATES         default "off on"; "off acct hook on" takes "on" apart
#   BENCH_TOGGLE_BACKEND        nft (default) or legacy: the agent's --backend, and the tools
#   BENCH_OFFLOADS, BENCH_WRK_CONNECTIONS, BENCH_CLIENT_CPU, BENCH_SERVER_CPU,
#   BENCH_NO_SETUP              as for agent-datapath.sh
#
# Output: Markdown on stdout and in .cache/bench/agent-datapath-toggle.md
# (with BENCH_OFFLOADS=on: agent-datapath-toggle-offloads.md; with acct,
# hook, twojumps, nocount or native among the states, -apart added to the name; with the
# legacy backend, -legacy); raw rows in
# .cache/bench/agent-out/NAME/runs.tsv, logs next to it.
source "$(dirname "${BASH_SOURCE[0]}")/agent-lib.sh"

read -r -a probabilities <<<"${BENCH_TOGGLE_PROBABILITIES:-0.0001 1}"
rounds=${BENCH_TOGGLE_ROUNDS:-60}
secs=${BENCH_TOGGLE_SECONDS:-1}
read -r -a states <<<"${BENCH_TOGGLE_STATES:-off on}"
backend=${BENCH_TOGGLE_BACKEND:-nft}
wrk_conns=${BENCH_WRK_CONNECTIONS:-50}
client_cpu=${BENCH_CLIENT_CPU:-0}
if [[ $(nproc) -ge 2 ]]; then server_cpu=${BENCH_SERVER_CPU:-1}; else server_cpu=${BENCH_SERVER_CPU:-0}; fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "agent-datapath-toggle: BENCH_TOGGLE_ROUNDS=$rounds: want a positive whole number" >&2 && exit 1; }
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "agent-datapath-toggle: BENCH_TOGGLE_SECONDS=$secs: want a positive whole number of seconds" >&2 && exit 1; }
[[ ${states[0]:-} == off ]] || { echo "agent-datapath-toggle: BENCH_TOGGLE_STATES must start with off (the baseline): ${states[*]}" >&2 && exit 1; }
[[ $backend == nft || $backend == legacy ]] || { echo "agent-datapath-toggle: BENCH_TOGGLE_BACKEND=$backend: want nft or legacy" >&2 && exit 1; }
for s in "${states[@]}"; do
	case $s in off | acct | hook | on | twojumps | nocount | native) ;; *) echo "agent-datapath-toggle: unknown state $s (off, acct, hook, on, twojumps, nocount, native)" >&2 && exit 1 ;; esac
	[[ $backend == legacy && $s == native ]] && { echo "agent-datapath-toggle: the native state is nftables: use it with the nft backend" >&2 && exit 1; }
	[[ $backend == legacy && $s == hook ]] && { echo "agent-datapath-toggle: no hook state with the legacy backend: its mangle table hooks PREROUTING from its first use, so off already has the hook" >&2 && exit 1; }
done
for p in "${probabilities[@]}"; do
	[[ $p =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ && ! $p =~ ^0(\.0+)?$ ]] || { echo "agent-datapath-toggle: probability $p: want a number in (0, 1]" >&2 && exit 1; }
done
metrics=127.0.0.1:19479
http_port=8080
name=agent-datapath-toggle
[[ ${BENCH_OFFLOADS:-off} == on ]] && name+=-offloads
[[ " ${states[*]} " == *" acct "* || " ${states[*]} " == *" hook "* || " ${states[*]} " == *" twojumps "* || " ${states[*]} " == *" nocount "* || " ${states[*]} " == *" native "* ]] && name+=-apart
[[ $backend == legacy ]] && name+=-legacy

bench_init "$name"
need_tools iperf3 wrk "iptables-$backend" "ip6tables-$backend" "iptables-$backend-save" "ip6tables-$backend-save" \
	"iptables-$backend-restore" "ip6tables-$backend-restore" nft nsenter taskset ethtool curl python3 ss
build_tools

rows=$LOGS/runs.tsv
printf 'probability\tround\tstate\tiperf3_bps\tiperf3_bytes\tiperf3_cpu_us\twrk_rps\twrk_requests\twrk_cpu_us\twrk_errors\tmangle_rules\tacct\n' >"$rows"

listening() { [[ -n $(in_ns "$SRV" ss -Hltn "sport = :$1") ]]; }
# iptables warns on every listing of a connlabel rule that
# /etc/xtables/connlabel.conf is missing (labels are numbers here, see
# agent/rules): quiet that one line, keep any other message.
quiet_connlabel() { "$@" 2> >(grep -v 'connlabel.conf' >&2); }
ipt() { quiet_connlabel in_ns "$SRV" "iptables-$backend" -w -t mangle "$@"; }
ip6t() { quiet_connlabel in_ns "$SRV" "ip6tables-$backend" -w -t mangle "$@"; }
restore4() { quiet_connlabel in_ns "$SRV" "iptables-$backend-restore" -w; }
restore6() { quiet_connlabel in_ns "$SRV" "ip6tables-$backend-restore" -w; }

# SAVED4 and SAVED6 hold the mangle tables as the agent installed them
# (iptables-save), read once the agent is ready: "on" restores them.
SAVED4="" SAVED6=""

# rules_off: no rule in either mangle table and, with nft, no PREROUTING
# base chain (no hook; legacy keeps its hooks, see above). Flushing the agent's chains too, not only its jump, matters:
# while its labelling rule exists the kernel gives every new connection of
# the namespace label storage (nf_connlabels_get is per namespace, for
# both families), which is part of what the agent costs.
rules_off() {
	local family tool
	[[ $backend == nft ]] && { in_ns "$SRV" nft delete table inet csbench 2>/dev/null || true; }
	for family in ip ip6; do
		tool=ipt
		[[ $family == ip6 ]] && tool=ip6t
		$tool -F
		if [[ $backend == nft ]] && in_ns "$SRV" nft list chain "$family" mangle PREROUTING >/dev/null 2>&1; then
			$tool -X PREROUTING
		fi
	done
}

# set_state STATE: puts the server namespace's mangle tables and conntrack
# accounting in STATE.
set_state() {
	case $1 in
	off | acct | hook)
		rules_off
		[[ $1 == hook ]] && ipt -P PREROUTING ACCEPT # creates the empty base chain
		in_ns "$SRV" sysctl -qw net.netfilter.nf_conntrack_acct="$([[ $1 == off ]] && echo 0 || echo 1)"
		;;
	twojumps)
		restore4 <<<"$TWOJUMPS4"
		restore6 <<<"$SAVED6"
		in_ns "$SRV" sysctl -qw net.netfilter.nf_conntrack_acct=1
		;;
	native)
		rules_off
		in_ns "$SRV" nft -f - <<<"$NATIVE"
		in_ns "$SRV" sysctl -qw net.netfilter.nf_conntrack_acct=1
		;;
	nocount)
		restore4 <<<"$NOCOUNT4"
		restore6 <<<"$NOCOUNT6"
		in_ns "$SRV" sysctl -qw net.netfilter.nf_conntrack_acct=0
		;;
	on)
		restore4 <<<"$SAVED4"
		restore6 <<<"$SAVED6"
		in_ns "$SRV" sysctl -qw net.netfilter.nf_conntrack_acct=1
		;;
	esac
}

# state_check STATE: prints the number of rules in the IPv4 mangle table
# (with nft, -1 when it has no PREROUTING base chain, so no hook: nft
# tells, as iptables-nft shows built-in chains whether or not they exist),
# and dies when that does not fit STATE: none (and, with nft, no hook) for
# off and acct, none (with the hook) for hook, the agent's rules for on.
state_check() {
	local n=-1 off=-1
	[[ $backend == legacy ]] && off=0 # legacy's table stays hooked: off is no rule
	if [[ $backend == legacy ]] || in_ns "$SRV" nft list chain ip mangle PREROUTING >/dev/null 2>&1; then
		n=$(ipt -S | grep -c -- '^-A ' || true)
	elif [[ $(ipt -S | grep -c -- '^-A ' || true) -gt 0 ]]; then
		n=-2 # rules but no hook: never a state of ours
	fi
	case $1 in
	off | acct) [[ $n -eq $off ]] ;;
	hook) [[ $n -eq 0 ]] ;;
	on) [[ $n -eq $AGENT_RULES ]] ;;
	twojumps | nocount) [[ $n -eq $((AGENT_RULES + 1)) ]] ;;
	native) [[ $n -eq -1 ]] && in_ns "$SRV" nft list chain inet csbench pre >/dev/null 2>&1 ;;
	esac || die "state $1: the IPv4 mangle table has $n rules (-1: no PREROUTING base chain)"
	echo "$n"
}

# one_state P ROUND STATE
one_state() {
	local p=$1 round=$2 state=$3 tag n acct
	tag=p$p-r$round-$state
	set_state "$state"
	n=$(state_check "$state")
	acct=$(in_ns "$SRV" cat /proc/sys/net/netfilter/nf_conntrack_acct)
	sleep 0.2
	local bps bytes rps reqs errs u0 u1 u2
	u0=$(acct_usage_us "$TRAFFIC")
	in_acct "$TRAFFIC" "$CLI" "$client_cpu" iperf3 -c "$SRV_IP" -t "$secs" -J >"$LOGS/iperf3-$tag.json" 2>&1 ||
		die "iperf3 -c failed: see $LOGS/iperf3-$tag.json"
	u1=$(acct_usage_us "$TRAFFIC")
	read -r bps bytes _ < <(iperf3_figures "$LOGS/iperf3-$tag.json")
	in_acct "$TRAFFIC" "$CLI" "$client_cpu" wrk -t1 -c "$wrk_conns" -d "${secs}s" -H 'Connection: close' \
		"http://$SRV_IP:$http_port/" >"$LOGS/wrk-$tag.txt" 2>&1 || die "wrk failed: see $LOGS/wrk-$tag.txt"
	u2=$(acct_usage_us "$TRAFFIC")
	read -r rps reqs errs < <(wrk_figures "$LOGS/wrk-$tag.txt")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$round" "$state" "$bps" "$bytes" "$((u1 - u0))" \
		"$rps" "${reqs:-0}" "$((u2 - u1))" "${errs:-0}" "$n" "$acct" >>"$rows"
	# the iperf3 JSON is large and only its end was needed
	rm -f "$LOGS/iperf3-$tag.json"
}

# agent_metric NAME: the sum of the agent's metric NAME (all labels).
agent_metric() {
	in_ns "$SRV" curl -sf "http://$metrics/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { n += $2 } END { printf "%d", n }'
}

declare -A LOGGED LOST AGENT_CPU
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for p in "${probabilities[@]}"; do
	ns_pair
	BG_ACCT=""
	acct_group
	TRAFFIC=$BG_ACCT
	start_bg "iperf3-p$p" "$SRV" "$server_cpu" iperf3 -s -B "$SRV_IP"
	start_bg "tinyhttp-p$p" "$SRV" "$server_cpu" "$CACHE/tinyhttp" -addr "$SRV_IP:$http_port"
	BG_ACCT=""
	acct_group
	agent_acct=$BG_ACCT
	# conntrack on in the namespace whatever the state (as on a Kubernetes
	# node): in the filter table, which the states leave alone
	in_ns "$SRV" "iptables-$backend" -w -N CSBENCH-CONNTRACK
	in_ns "$SRV" "iptables-$backend" -w -A CSBENCH-CONNTRACK -m conntrack --ctstate NEW -j RETURN
	start_bg "agent-p$p" "$SRV" "$server_cpu" "$CACHE/connscope" agent --policy bench-datapath \
		--probability "$p" --packet-cap 10 --label-bit 7 --nflog-group 43 --backend "$backend" --resync 1h \
		--metrics-addr "$metrics" --sink "file://$WORK/agent-p$p.pcapng"
	agent_pid=$BG_PID
	BG_ACCT=""
	wait_for 30 in_ns "$SRV" curl -sf -o /dev/null "http://$metrics/readyz" || die "the agent did not become ready: see $LOGS/agent-p$p.log"
	wait_for 10 listening "$http_port" || die "tinyhttp did not start: see $LOGS/tinyhttp-p$p.log"
	wait_for 10 listening 5201 || die "iperf3 -s did not start: see $LOGS/iperf3-p$p.log"
	SAVED4=$(quiet_connlabel in_ns "$SRV" "iptables-$backend-save" -t mangle)
	SAVED6=$(quiet_connlabel in_ns "$SRV" "ip6tables-$backend-save" -t mangle)
	AGENT_RULES=$(ipt -S | grep -c -- '^-A ' || true)
	# twojumps: the agent's IPv4 table with its one jump (the first
	# connbytes packets of every TCP connection) replaced by two: new
	# connections' SYNs, and connections with the policy's label
	chain=$(ipt -S PREROUTING | sed -n 's/^-A PREROUTING .* -j \(CONNSCOPE-[A-Z0-9-]*\)$/\1/p')
	TWOJUMPS4=$(sed "s|^-A PREROUTING .* -j $chain\$|-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j $chain\n-A PREROUTING -m connlabel --label 7 -j $chain|" <<<"$SAVED4")
	# nocount: two jumps (SYNs, by flags alone; labelled connections) and
	# the log rule without connbytes, in both families
	nocount() {
		sed -e "s|^-A PREROUTING .* -j $chain\$|-A PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j $chain\n-A PREROUTING -m connlabel --label 7 -j $chain|" \
			-e 's| -m connbytes ! --connbytes [0-9]* --connbytes-mode packets --connbytes-dir original||'
	}
	# native: the same rules in nft's own expressions (probability as
	# numgen's 1 in round(1/p)), one table for both families
	NATIVE="table inet csbench {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp ct original packets 0-10 jump cs
	}
	chain cs {
		tcp flags & (fin|syn|rst|ack) == syn ct state new numgen random mod $(awk -v p="$p" 'BEGIN { printf "%d", 1 / p + 0.5 }') 0 ct label set 7
		ct label 7 ct direction original ct original packets 0-10 log group 43 snaplen 128
	}
}"
	NOCOUNT4=$(nocount <<<"$SAVED4")
	NOCOUNT6=$(nocount <<<"$SAVED6")
	grep -q connbytes <<<"$NOCOUNT4$NOCOUNT6" && die "nocount: a connbytes match is left: $NOCOUNT4"
	[[ $(ipt -S PREROUTING | grep -c -- '^-A PREROUTING' || true) -eq 1 ]] || die "expected the agent's one jump in mangle PREROUTING: $(ipt -S PREROUTING)"
	log "p=$p: the agent's IPv4 mangle rules ($AGENT_RULES):"$'\n'"$(ipt -S | grep -- '^-A ')"
	# one warm-up run in each state, not counted
	for s in "${states[@]}"; do one_state "$p" 0 "$s"; done
	a0=$(acct_usage_us "$agent_acct")
	for ((r = 1; r <= rounds; r++)); do
		# alternate the order (reversed every other round), so that no
		# state always runs before another
		order=("${states[@]}")
		if ((r % 2 == 0)); then
			order=()
			for ((i = ${#states[@]} - 1; i >= 0; i--)); do order+=("${states[$i]}"); done
		fi
		for s in "${order[@]}"; do one_state "$p" "$r" "$s"; done
		((r % 10 == 0)) && log "p=$p: $r of $rounds rounds"
	done
	a1=$(acct_usage_us "$agent_acct")
	set_state on # as the agent left them, so that it removes what it installed
	LOGGED[$p]=$(agent_metric connscope_agent_packets_logged_total)
	LOST[$p]=$(agent_metric connscope_agent_packets_lost_total)
	AGENT_CPU[$p]=$((a1 - a0))
	stop_bg "$agent_pid" TERM 30
	left=$(ipt -S 2>/dev/null | grep -c -- '^-A ' || true)
	[[ $left -eq 0 ]] || die "the agent left $left rules in the mangle table"
	rm -f "$WORK/agent-p$p.pcapng"
	ns_drop
	sleep 3
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

report=$CACHE/$name.md
agentinfo=""
for p in "${probabilities[@]}"; do
	agentinfo+="p=$p: logged ${LOGGED[$p]}, lost ${LOST[$p]}, agent CPU $(awk -v u="${AGENT_CPU[$p]}" 'BEGIN { printf "%.2f", u / 1e6 }') s; "
done
{
	echo "## Datapath, rules switched on and off within one run"
	echo
	echo "$started to $(date -u +%Y-%m-%dT%H:%M:%SZ), $(kernel_info); load average before $load_before, after $load_after."
	if [[ ${BENCH_OFFLOADS:-off} == on ]]; then
		echo "One namespace pair per probability (veth with its default offloads: 64 KiB aggregates)"
	else
		echo "One namespace pair per probability (veth, TSO/GSO/GRO off: every 1448-byte segment is a packet the rules see, the worst case)"
	fi
	echo "with the agent running throughout; client tools on core $client_cpu, servers and agent on core $server_cpu."
	echo "$rounds rounds per probability, each state once per round (order alternating); in each state \`iperf3 -c SERVER -t $secs\` then \`wrk -t1 -c $wrk_conns -d ${secs}s -H 'Connection: close'\`."
	hookinfo=""
	[[ " ${states[*]} " == *" acct "* ]] && hookinfo+=" acct: as off, accounting on."
	[[ " ${states[*]} " == *" hook "* ]] && hookinfo+=" hook: an empty mangle PREROUTING base chain, accounting on."
	[[ " ${states[*]} " == *" twojumps "* ]] && hookinfo+=" twojumps: on, with the one jump replaced by two (SYNs of new connections; labelled connections)."
	[[ " ${states[*]} " == *" native "* ]] && hookinfo+=" native: the agent's rules as native nftables expressions in a table of their own (no x_tables match), accounting on."
	[[ " ${states[*]} " == *" nocount "* ]] && hookinfo+=" nocount: two jumps (SYNs; labelled connections), the log rule without connbytes (every packet of a labelled connection logged), accounting off."
	if [[ $backend == legacy ]]; then
		echo "Backend iptables-legacy. off: no connscope rule (both mangle tables empty; legacy's mangle hooks stay, as on a Kubernetes node on iptables-legacy, whose kubelet keeps chains in that table), conntrack accounting off (conntrack on). on: the agent's rules as it installed them, accounting on.$hookinfo"
	else
		echo "Backend iptables-nft. off: no connscope rule (both mangle tables empty), no mangle PREROUTING hook, conntrack accounting off (conntrack on). on: the agent's rules as it installed them, accounting on.$hookinfo"
	fi
	echo "Agent over the counted rounds: ${agentinfo%; }."
	echo
	python3 - "$rows" "${states[@]}" <<'EOF'
import csv, math, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
states = sys.argv[2:]

def ci_rank(m):
    # the largest k with P(Binomial(m, 1/2) <= k - 1) <= 0.025
    cum, k = 0.0, 0
    for j in range(m + 1):
        p = math.comb(m, j) / 2 ** m
        if cum + p > 0.025:
            break
        cum += p
        k = j + 1
    return k

def interval(changes):
    a = sorted(changes)
    m = len(a)
    k = ci_rank(m)
    if k < 1:
        return statistics.median(a), None, None
    return statistics.median(a), a[k - 1], a[m - k]

def measures(r):
    bps, gb = float(r["iperf3_bps"]), float(r["iperf3_bytes"]) / 1e9
    rps, reqs = float(r["wrk_rps"]), float(r["wrk_requests"])
    return {
        "rate": bps,
        "cpu_gb": (float(r["iperf3_cpu_us"]) / 1e6) / gb if gb > 0 else None,
        "conns": rps,
        "cpu_conn": float(r["wrk_cpu_us"]) / reqs if reqs > 0 else None,
    }

# sign: +1 where more is worse (CPU), -1 where less is worse (rates)
cols = [("rate", -1, "iperf3 throughput"), ("cpu_gb", 1, "CPU per GB"),
        ("conns", -1, "new connections/s"), ("cpu_conn", 1, "CPU per connection")]
by = {}
for r in rows:
    if r["round"] == "0":
        continue
    by.setdefault(r["probability"], {}).setdefault(r["round"], {})[r["state"]] = measures(r)

def verdict(lo, hi):
    if hi is None:
        return "too few rounds"
    if hi <= 1:
        return "met"
    if lo > 1:
        return "missed"
    return "undecided"

print("| probability | state | " + " | ".join(c[2] + " (median)" for c in cols) + " |")
print("|---|---|" + "---:|" * len(cols))
for p, rounds in by.items():
    for s in states:
        vals = []
        for c, _, _ in cols:
            xs = [rd[s][c] for rd in rounds.values() if s in rd and rd[s][c] is not None]
            v = statistics.median(xs) if xs else float("nan")
            vals.append({"rate": f"{v/1e9:.3f} Gbit/s", "cpu_gb": f"{v:.3f} s", "conns": f"{v:.0f}", "cpu_conn": f"{v:.1f} µs"}[c])
        print(f"| {p} | {s} | " + " | ".join(vals) + " |")
print()
print("Change against off in the same round: median [95 % interval] over the rounds; positive is worse (a slower rate, more CPU per unit). The 1 % target: met when the interval's high end is at most +1 %, missed when its low end is above +1 %.")
print()
print("| probability | state | " + " | ".join(c[2] for c in cols) + " | rounds |")
print("|---|---|" + "---|" * len(cols) + "---:|")
summary = []
for p, rounds in by.items():
    for s in states[1:]:
        cells = []
        n = 0
        for c, sign, label in cols:
            ch = []
            for rd in rounds.values():
                if s in rd and "off" in rd and rd[s][c] is not None and rd["off"][c]:
                    ch.append(sign * 100 * (rd[s][c] - rd["off"][c]) / rd["off"][c])
            n = max(n, len(ch))
            if not ch:
                cells.append("")
                continue
            md, lo, hi = interval(ch)
            if lo is None:
                cells.append(f"{md:+.1f} %")
            else:
                cells.append(f"{md:+.2f} % [{lo:+.2f}, {hi:+.2f}]")
                if s == "on" and float(p) <= 0.0001:
                    summary.append(f"{label} {md:+.2f} % [{lo:+.2f}, {hi:+.2f}]: {verdict(lo, hi)}")
        print(f"| {p} | {s} | " + " | ".join(cells) + f" | {n} |")
if summary:
    print()
    print("- Target, at most 1 % loss at probability 0.0001 (on against off): " + "; ".join(summary) + ".")
errs = sum(int(r["wrk_errors"]) for r in rows)
print(f"- wrk socket errors over all runs: {errs}.")
EOF
} >"$report"
write_agent_results
cat "$report"
log "results in $report; raw rows in $rows; logs in $LOGS"
