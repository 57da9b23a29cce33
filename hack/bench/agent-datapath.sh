#!/usr/bin/env bash
# agent-datapath.sh is the agent's datapath benchmark (`make
# bench-agent-datapath`, part of `make bench`): what the agent's rules cost
# the traffic they watch, in TCP throughput and in new connections per
# second, under five conditions:
#
#   none         no rule in the server namespace (conntrack is not even loaded
#                there: nothing asks for it)
#   conntrack    conntrack on and nothing else: one rule with a conntrack match
#                in a chain nothing jumps to, which turns conntrack on for the
#                namespace and never runs. Every Kubernetes node runs
#                conntrack (kube-proxy), so this is the baseline the rules
#                add to there.
#   acct         conntrack as above and conntrack accounting on
#                (net.netfilter.nf_conntrack_acct=1 in the server namespace):
#                what the rules' connbytes match switches on for the whole
#                namespace, measured apart from the rules themselves
#   hook         acct, plus an empty mangle PREROUTING base chain: what
#                hooking the mangle table into PREROUTING costs by itself
#                (not in the default set; for taking the cost apart)
#   jump         hook, plus the agent's jump rule (-p tcp, connbytes 0:10
#                packets in the original direction) into a chain holding
#                one rule that does nothing: what a packet past a
#                connection's first 10 pays at any probability (not in the
#                default set)
#   p=0.0001     `connscope agent --probability 0.0001` (file sink)
#   p=1          `connscope agent --probability 1` (every connection's first
#                10 client packets logged and written)
#
# For each run a fresh pair of namespaces (client and server, one veth with
# TSO/GSO/GRO off, so that every 1448-byte segment is a packet netfilter
# sees: the worst case for per-packet rules; 198.18.0.0/30): iperf3 -s and
# hack/bench/tinyhttp (one fixed response, Connection: close) in the server
# namespace, on core BENCH_SERVER_CPU, the agent on the same core; from the
# client namespace, on core BENCH_CLIENT_CPU:
#
#   iperf3 -c SERVER -t BENCH_DATAPATH_SECONDS -J       one TCP stream, receiver's rate
#   wrk -t1 -c BENCH_WRK_CONNECTIONS -d BENCH_DATAPATH_SECONDS -H 'Connection: close' http://SERVER:8080/
#                                                       one new connection per request
#
# Two measures of each: the rate (wall clock: what a user sees, but on a
# machine shared with other work it moves with their load), and the CPU
# time the traffic took (user+system time of iperf3 or wrk and the servers,
# which includes the kernel's packet path, softirqs included, run on their
# behalf; from a cpuacct cgroup, exact, not sampled) per GB or per
# connection: on a busy machine this moves far less than the rate, as it
# does not count the time the traffic waited for a core. The agent's own
# CPU time is reported apart.
#
# Each condition runs BENCH_DATAPATH_RUNS times, the conditions interleaved
# and rotated (round 1: none, conntrack, acct, p=0.0001, p=1; round 2
# starts at conntrack; ...) so that drift in the machine's load, and the
# previous run's namespace being torn down (the script also waits 3 s after
# each), spread over all of them; the table gives the median and the range
# (min-max) of every measure. Loss is (baseline - condition) / baseline of
# the medians (for CPU, the extra CPU per unit), against no rules and
# against conntrack alone; the comparison that matters for a node is
# p=0.0001 against conntrack.
#
# Environment:
#   BENCH_DATAPATH_SECONDS   seconds of each iperf3 and wrk run (default 5)
#   BENCH_DATAPATH_RUNS      runs of each condition (default 5)
#   BENCH_DATAPATH_CONDITIONS  which conditions (default "none conntrack acct p=0.0001 p=1";
#                            hook and jump take the cost of p=0.0001 apart)
#   BENCH_OFFLOADS           "on": the veth keeps its segmentation offloads
#                            (TSO, GSO), so the rules see 64 KiB aggregates as
#                            on a node whose NIC does GRO; default "off"
#                            (every 1448-byte segment a packet: the worst case)
#   BENCH_WRK_CONNECTIONS    wrk's concurrent connections (default 50)
#   BENCH_CLIENT_CPU         core of iperf3 -c and wrk (default 0)
#   BENCH_SERVER_CPU         core of the servers and the agent (default 1; 0 on one core)
#   BENCH_NO_SETUP=1         do not run hack/setup-bench.sh when a tool is missing
#
# Output: Markdown on stdout and in .cache/bench/agent-datapath.md (with
# BENCH_OFFLOADS=on: agent-datapath-offloads.md); raw rows
# in .cache/bench/agent-out/agent-datapath/runs.tsv, logs next to it.
source "$(dirname "${BASH_SOURCE[0]}")/agent-lib.sh"

secs=${BENCH_DATAPATH_SECONDS:-5}
runs=${BENCH_DATAPATH_RUNS:-5}
wrk_conns=${BENCH_WRK_CONNECTIONS:-50}
client_cpu=${BENCH_CLIENT_CPU:-0}
if [[ $(nproc) -ge 2 ]]; then server_cpu=${BENCH_SERVER_CPU:-1}; else server_cpu=${BENCH_SERVER_CPU:-0}; fi
read -r -a conditions <<<"${BENCH_DATAPATH_CONDITIONS:-none conntrack acct p=0.0001 p=1}"
for c in "${conditions[@]}"; do
	case $c in
	none | conntrack | acct | hook | jump | p=[0-9]*) ;;
	*) echo "agent-datapath: unknown condition $c (none, conntrack, acct, hook, jump, p=PROBABILITY)" >&2 && exit 1 ;;
	esac
done
metrics=127.0.0.1:19478
http_port=8080
settle=3

bench_init agent-datapath
need_tools iperf3 wrk iptables-nft nsenter taskset ethtool curl python3 ss
build_tools

rows=$LOGS/runs.tsv
printf 'condition\trun\tiperf3_bps\tiperf3_bytes\tiperf3_cpu_us\tretransmits\twrk_rps\twrk_requests\twrk_cpu_us\twrk_errors\tagent_cpu_us\tagent_logged\tagent_lost\tconntrack_entries\tacct\n' >"$rows"

listening() { [[ -n $(in_ns "$SRV" ss -Hltn "sport = :$1") ]]; }

# one_run CONDITION RUN
one_run() {
	local cond=$1 run=$2 tag agent_pid="" traffic agent_acct=""
	tag=$(tr -c 'a-z0-9\n' '_' <<<"$cond")-$run
	ns_pair
	BG_ACCT=""
	acct_group
	traffic=$BG_ACCT
	start_bg "iperf3-$tag" "$SRV" "$server_cpu" iperf3 -s -B "$SRV_IP"
	start_bg "tinyhttp-$tag" "$SRV" "$server_cpu" "$CACHE/tinyhttp" -addr "$SRV_IP:$http_port"
	case $cond in
	none) ;;
	conntrack | acct | hook | jump)
		in_ns "$SRV" iptables-nft -t mangle -N CSBENCH-CONNTRACK
		in_ns "$SRV" iptables-nft -t mangle -A CSBENCH-CONNTRACK -m conntrack --ctstate NEW -j RETURN
		[[ $cond != conntrack ]] && in_ns "$SRV" sysctl -qw net.netfilter.nf_conntrack_acct=1
		# an empty base chain: setting its policy creates it
		[[ $cond == hook || $cond == jump ]] && in_ns "$SRV" iptables-nft -t mangle -P PREROUTING ACCEPT
		[[ $cond == jump ]] && in_ns "$SRV" iptables-nft -t mangle -A PREROUTING -p tcp -m connbytes --connbytes 0:10 \
			--connbytes-mode packets --connbytes-dir original -j CSBENCH-CONNTRACK
		;;
	p=*)
		BG_ACCT=""
		acct_group
		agent_acct=$BG_ACCT
		start_bg "agent-$tag" "$SRV" "$server_cpu" "$CACHE/connscope" agent --policy bench-datapath \
			--probability "${cond#p=}" --packet-cap 10 --label-bit 7 --nflog-group 43 --backend nft \
			--metrics-addr "$metrics" --sink "file://$WORK/agent-$tag.pcapng"
		agent_pid=$BG_PID
		wait_for 30 in_ns "$SRV" curl -sf -o /dev/null "http://$metrics/readyz" || die "the agent did not become ready: see $LOGS/agent-$tag.log"
		;;
	esac
	BG_ACCT=""
	wait_for 10 listening "$http_port" || die "tinyhttp did not start: see $LOGS/tinyhttp-$tag.log"
	wait_for 10 listening 5201 || die "iperf3 -s did not start: see $LOGS/iperf3-$tag.log"
	sleep 0.5

	local bps bytes retr rps reqs errs u0 u1 u2 a0="" a1=""
	[[ -n $agent_acct ]] && a0=$(acct_usage_us "$agent_acct")
	u0=$(acct_usage_us "$traffic")
	in_acct "$traffic" "$CLI" "$client_cpu" iperf3 -c "$SRV_IP" -t "$secs" -J >"$LOGS/iperf3-client-$tag.json" 2>&1 ||
		die "iperf3 -c failed: see $LOGS/iperf3-client-$tag.json"
	u1=$(acct_usage_us "$traffic")
	read -r bps bytes retr < <(iperf3_figures "$LOGS/iperf3-client-$tag.json")
	sleep 0.5
	u1=$(acct_usage_us "$traffic")
	in_acct "$traffic" "$CLI" "$client_cpu" wrk -t1 -c "$wrk_conns" -d "${secs}s" -H 'Connection: close' \
		"http://$SRV_IP:$http_port/" >"$LOGS/wrk-$tag.txt" 2>&1 || die "wrk failed: see $LOGS/wrk-$tag.txt"
	u2=$(acct_usage_us "$traffic")
	[[ -n $agent_acct ]] && a1=$(acct_usage_us "$agent_acct")
	read -r rps reqs errs < <(wrk_figures "$LOGS/wrk-$tag.txt")

	local logged="" lost=""
	if [[ -n $agent_pid ]]; then
		in_ns "$SRV" curl -sf "http://$metrics/metrics" >"$LOGS/agent-$tag.metrics" || true
		logged=$(awk '$1 == "connscope_agent_packets_logged_total" { printf "%d", $2 }' "$LOGS/agent-$tag.metrics")
		lost=$(awk '$1 ~ /^connscope_agent_packets_lost_total/ { n += $2 } END { printf "%d", n }' "$LOGS/agent-$tag.metrics")
		stop_bg "$agent_pid" TERM 30
		rm -f "$WORK/agent-$tag.pcapng"
	fi
	# whether conntrack ran in the server namespace (the connections it
	# holds), and whether accounting was on
	local ct acct
	ct=$(in_ns "$SRV" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0)
	acct=$(in_ns "$SRV" cat /proc/sys/net/netfilter/nf_conntrack_acct 2>/dev/null || echo 0)
	ns_drop
	# The kernel tears a namespace down in the background (its sockets and
	# conntrack entries): let that finish before the next run measures.
	sleep "$settle"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cond" "$run" "$bps" "$bytes" "$((u1 - u0))" "$retr" \
		"$rps" "${reqs:-0}" "$((u2 - u1))" "${errs:-0}" "${a1:+$((a1 - a0))}" "$logged" "$lost" "$ct" "$acct" >>"$rows"
	log "$cond run $run: iperf3 $(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }') Gbit/s, $(awk -v u="$((u1 - u0))" -v b="$bytes" 'BEGIN { printf "%.3f", (u / 1e6) / (b / 1e9) }') CPU s/GB; wrk $rps conn/s, $(awk -v u="$((u2 - u1))" -v n="${reqs:-0}" 'BEGIN { printf "%.1f", (n > 0 ? u / n : 0) }') CPU µs/conn (errors ${errs:-0})${logged:+; agent logged $logged, lost $lost}"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= runs; r++)); do
	# round r starts at condition r: no condition always follows the same one
	for ((i = 0; i < ${#conditions[@]}; i++)); do
		one_run "${conditions[$(((r - 1 + i) % ${#conditions[@]}))]}" "$r"
	done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

report=$CACHE/agent-datapath.md
[[ ${BENCH_OFFLOADS:-off} == on ]] && report=$CACHE/agent-datapath-offloads.md
{
	echo "## Datapath: what the rules cost the traffic"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(kernel_info); load average before $load_before, after $load_after."
	if [[ ${BENCH_OFFLOADS:-off} == on ]]; then
		echo "A fresh namespace pair per run (veth with its default offloads, TSO and GSO on: iperf3's 64 KiB segments cross as one packet each, as a NIC's GRO aggregates them on a real node); client tools on core $client_cpu, servers and agent on core $server_cpu."
	else
		echo "A fresh namespace pair per run (veth, TSO/GSO/GRO off: every 1448-byte segment is a packet the rules see, the worst case); client tools on core $client_cpu, servers and agent on core $server_cpu."
	fi
	echo "iperf3 $(iperf3 --version 2>/dev/null | head -n 1 | awk '{ print $2 }'): \`iperf3 -c SERVER -t $secs\`, one TCP stream, the receiver's rate. wrk: \`wrk -t1 -c $wrk_conns -d ${secs}s -H 'Connection: close'\` against hack/bench/tinyhttp: every request a new TCP connection."
	echo "CPU: user+system time of the traffic's processes (iperf3 or wrk, and the servers), kernel packet path on their behalf included, from a cpuacct cgroup (exact), per GB received or per connection; the agent's CPU apart."
	echo "Agent: \`connscope agent --probability P --packet-cap 10 --label-bit 7 --nflog-group 43 --backend nft --sink file://…\` (all ports, IPv4 and IPv6 rules). conntrack: one conntrack-match rule in an unreferenced chain (conntrack on, no rule runs). acct: the same with net.netfilter.nf_conntrack_acct=1, which the agent's connbytes match switches on."
	echo "$runs runs per condition, interleaved and rotated; median [min–max]."
	echo
	awk -F'\t' '
	function med(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		lo = a[1]; hi = a[n]
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function cell(s, scale, fmt,   m) { m = med(s); return sprintf(fmt " [" fmt "–" fmt "]", m / scale, lo / scale, hi / scale) }
	function slower(b, v) { return b > 0 ? sprintf("%+.1f%%", 100 * (b - v) / b) : "" }
	function costlier(b, v) { return b > 0 ? sprintf("%+.1f%%", 100 * (v - b) / b) : "" }
	# Paired comparison: within each round the conditions ran one after the
	# other, so the ratio of a condition to the baseline in the same round
	# cancels most of the drift in the machine'"'"'s load that the medians of
	# the whole runs keep. For each measure, the median of the per-round
	# changes and a distribution-free 95% interval for that median (order
	# statistics of the changes, from the binomial distribution: the sign
	# test'"'"'s interval), so a reader sees whether 1% is inside it.
	function ci_rank(m,   k, p, cum, j) {
		# the largest k with P(Binomial(m, 1/2) <= k-1) <= 0.025
		cum = 0; k = 0
		for (j = 0; j <= m; j++) {
			p = exp(lgamma(m + 1) - lgamma(j + 1) - lgamma(m - j + 1) - m * log(2))
			if (cum + p > 0.025) break
			cum += p; k = j + 1
		}
		return k
	}
	function lgamma(x,   s) { s = 0; while (x > 1) { x--; s += log(x) } return s }
	# changes ARR BASE COND SIGN: per-round changes (in %, positive = worse)
	# of COND against BASE, joined by spaces; SIGN 1 for a cost (more is
	# worse), -1 for a rate (less is worse).
	function changes(arr, base, cond, sign,   r, s, v) {
		s = ""
		for (r = 1; r <= rounds; r++) {
			if (!(((base, r) in arr) && ((cond, r) in arr)) || arr[base, r] <= 0) continue
			v = sign * 100 * (arr[cond, r] - arr[base, r]) / arr[base, r]
			s = s " " v
		}
		return s
	}
	function paired_cell(s,   a, m, i, j, t, k, md) {
		m = split(s, a, " ")
		if (m == 0) return ""
		for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		md = m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
		k = ci_rank(m)
		if (k < 1) return sprintf("%+.1f%% (%d rounds: too few for a 95%% interval)", md, m)
		return sprintf("%+.1f%% [%+.1f%%, %+.1f%%] (%d rounds)", md, a[k], a[m + 1 - k], m)
	}
	function paired_report(   i, c, base) {
		base = ("conntrack" in seen) ? "conntrack" : (("none" in seen) ? "none" : "")
		if (base == "") return
		paired = "\n### Paired by round, against " base "\n\nEach round ran every condition once, one after the other; the change of a condition against " base " within the same round, then the median of those changes over the rounds and its 95% interval [low, high] (distribution-free: order statistics of the per-round changes). Positive is worse: a slower rate or more CPU per unit. The 1% target is shown met only when the interval'"'"'s high end is at most +1%.\n\n| condition | iperf3 rate | CPU per GB | new connections/s | CPU per connection |\n|---|---|---|---|---|\n"
		for (i = 1; i <= n; i++) {
			c = order[i]
			if (c == base) continue
			paired = paired sprintf("| %s | %s | %s | %s | %s |\n", c, paired_cell(changes(rb, base, c, -1)), paired_cell(changes(rg, base, c, 1)), paired_cell(changes(rr, base, c, -1)), paired_cell(changes(rc, base, c, 1)))
		}
	}
	NR == 1 { next }
	{
		c = $1
		if (!(c in seen)) { seen[c] = 1; order[++n] = c }
		bps[c] = bps[c] " " $3
		if ($4 > 0) gbcpu[c] = gbcpu[c] " " ($5 / 1e6) / ($4 / 1e9)
		r = $2; if (r > rounds) rounds = r
		rb[c, r] = $3; rr[c, r] = $7
		if ($4 > 0) rg[c, r] = ($5 / 1e6) / ($4 / 1e9)
		if ($8 > 0) rc[c, r] = $9 / $8
		rps[c] = rps[c] " " $7
		if ($8 > 0) conncpu[c] = conncpu[c] " " $9 / $8
		errs[c] += $10; retr[c] += $6; if ($14 > ct[c]) ct[c] = $14
		if ($11 != "") agcpu[c] = agcpu[c] " " $11 / 1e6
		if ($12 != "") { logged[c] += $12; lost[c] += $13 }
		acct[c] = acct[c] $15
	}
	END {
		for (i = 1; i <= n; i++) { c = order[i]; mb[c] = med(bps[c]); mg[c] = med(gbcpu[c]); mr[c] = med(rps[c]); mc[c] = med(conncpu[c]) }
		paired_report()
		print "| condition | iperf3 Gbit/s | vs none | vs conntrack | CPU s per GB | vs none | vs conntrack | new connections/s | vs none | vs conntrack | CPU µs per connection | vs none | vs conntrack | agent CPU s per run | wrk errors | iperf3 retransmits | conntrack entries (max) | agent: logged, lost |"
		print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
		for (i = 1; i <= n; i++) {
			c = order[i]
			nb = (c == "none"); nc = (c == "none" || c == "conntrack")
			ag = (c in logged) ? sprintf("%d, %d", logged[c], lost[c]) : ""
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %s |\n", c,
				cell(bps[c], 1e9, "%.2f"), (nb ? "" : slower(mb["none"], mb[c])), (nc ? "" : slower(mb["conntrack"], mb[c])),
				cell(gbcpu[c], 1, "%.3f"), (nb ? "" : costlier(mg["none"], mg[c])), (nc ? "" : costlier(mg["conntrack"], mg[c])),
				cell(rps[c], 1, "%.0f"), (nb ? "" : slower(mr["none"], mr[c])), (nc ? "" : slower(mr["conntrack"], mr[c])),
				cell(conncpu[c], 1, "%.1f"), (nb ? "" : costlier(mc["none"], mc[c])), (nc ? "" : costlier(mc["conntrack"], mc[c])),
				((c in agcpu) ? cell(agcpu[c], 1, "%.3f") : ""), errs[c], retr[c], ct[c], ag
		}
		print ""
		print "Rates: a positive percentage is a slowdown. CPU: a positive percentage is extra CPU per GB or per connection. Either, negative: noise in the agent'"'"'s favour. Compare a difference with the ranges: when the ranges of two conditions overlap, this machine did not tell them apart."
		c = "p=0.0001"
		if ((c in seen) && ("conntrack" in seen)) {
			printf "\n- Target, at most 1%% loss at probability 0.0001, against conntrack alone (a Kubernetes node): throughput %s and CPU per GB %s; new connections/s %s and CPU per connection %s.\n", slower(mb["conntrack"], mb[c]), costlier(mg["conntrack"], mg[c]), slower(mr["conntrack"], mr[c]), costlier(mc["conntrack"], mc[c])
			if ("acct" in seen)
				printf "- Of which conntrack accounting alone (acct vs conntrack): throughput %s, CPU per GB %s; connections/s %s, CPU per connection %s.\n", slower(mb["conntrack"], mb["acct"]), costlier(mg["conntrack"], mg["acct"]), slower(mr["conntrack"], mr["acct"]), costlier(mc["conntrack"], mc["acct"])
		}
		if ((c in seen) && ("none" in seen))
			printf "- Against no rules at all (conntrack not loaded): throughput %s, CPU per GB %s; connections/s %s, CPU per connection %s.\n", slower(mb["none"], mb[c]), costlier(mg["none"], mg[c]), slower(mr["none"], mr[c]), costlier(mc["none"], mc[c])
		printf "%s", paired
	}' "$rows"
} >"$report"
write_agent_results
cat "$report"
log "results in $report; raw rows in $rows; logs in $LOGS"
