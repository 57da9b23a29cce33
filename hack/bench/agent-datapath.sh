#!/usr/bin/env bash
# agent-datapath.sh is the agent's datapath benchmark (`make
# bench-agent-datapath`, part of `make bench`): what the agent's rules cost
# the traffic they watch, in TCP throughput and in new connections per
# second, under four conditions:
#
#   none         no rule in the server namespace (conntrack is not even loaded
#                there: nothing asks for it)
#   conntrack    conntrack on and nothing else: one rule with a conntrack match
#                in a chain nothing jumps to, which turns conntrack on for the
#                namespace and never runs. Every Kubernetes node runs
#                conntrack (kube-proxy), so this is the baseline the rules
#                add to there.
#   p=0.0001     `connscope agent --probability 0.0001` (file sink)
#   p=1          `connscope agent --probability 1` (every connection's first
#                10 client packets logged and written)
#
# For each run a fresh pair of namespaces (client and server, one veth with
# TSO/GSO/GRO off, 198.18.0.0/30): iperf3 -s and hack/bench/tinyhttp (one
# fixed response, Connection: close) in the server namespace, on core
# BENCH_SERVER_CPU with the agent; from the client namespace, on core
# BENCH_CLIENT_CPU:
#
#   iperf3 -c SERVER -t BENCH_DATAPATH_SECONDS -J       one TCP stream, receiver's rate
#   wrk -t1 -c BENCH_WRK_CONNECTIONS -d BENCH_DATAPATH_SECONDS -H 'Connection: close' http://SERVER:8080/
#                                                       one new connection per request
#
# Each condition runs BENCH_DATAPATH_RUNS times, the conditions interleaved
# and rotated (round 1: none, conntrack, p=0.0001, p=1; round 2 starts at
# conntrack; ...) so that drift in the machine's load, and the previous
# run's namespace being torn down (the script also waits 3 s after each),
# spread over all of them; the table gives the median and every run. Loss is (baseline - condition) / baseline of the medians, with
# both baselines.
#
# Environment:
#   BENCH_DATAPATH_SECONDS   seconds of each iperf3 and wrk run (default 5)
#   BENCH_DATAPATH_RUNS      runs of each condition (default 3)
#   BENCH_WRK_CONNECTIONS    wrk's concurrent connections (default 50)
#   BENCH_CLIENT_CPU         core of iperf3 -c and wrk (default 0)
#   BENCH_SERVER_CPU         core of the servers and the agent (default 1; 0 on one core)
#   BENCH_NO_SETUP=1         do not run hack/setup-bench.sh when a tool is missing
#
# Output: Markdown on stdout and in .cache/bench/agent-datapath.md; raw rows
# in .cache/bench/agent-out/agent-datapath/runs.tsv, logs next to it.
source "$(dirname "${BASH_SOURCE[0]}")/agent-lib.sh"

secs=${BENCH_DATAPATH_SECONDS:-5}
runs=${BENCH_DATAPATH_RUNS:-3}
wrk_conns=${BENCH_WRK_CONNECTIONS:-50}
client_cpu=${BENCH_CLIENT_CPU:-0}
if [[ $(nproc) -ge 2 ]]; then server_cpu=${BENCH_SERVER_CPU:-1}; else server_cpu=${BENCH_SERVER_CPU:-0}; fi
conditions=(none conntrack p=0.0001 p=1)
metrics=127.0.0.1:19478
http_port=8080
settle=3

bench_init agent-datapath
need_tools iperf3 wrk iptables-nft nsenter taskset ethtool curl python3 ss
build_tools

rows=$LOGS/runs.tsv
printf 'condition\trun\tiperf3_bps\tretransmits\twrk_rps\twrk_errors\tagent_logged\tagent_lost\tconntrack_entries\n' >"$rows"

listening() { [[ -n $(in_ns "$SRV" ss -Hltn "sport = :$1") ]]; }

# one_run CONDITION RUN
one_run() {
	local cond=$1 run=$2 tag agent_pid="" note=""
	tag=$(tr -c 'a-z0-9\n' '_' <<<"$cond")-$run
	ns_pair
	start_bg "iperf3-$tag" "$SRV" "$server_cpu" iperf3 -s -B "$SRV_IP"
	start_bg "tinyhttp-$tag" "$SRV" "$server_cpu" "$CACHE/tinyhttp" -addr "$SRV_IP:$http_port"
	case $cond in
	none) ;;
	conntrack)
		in_ns "$SRV" iptables-nft -t mangle -N CSBENCH-CONNTRACK
		in_ns "$SRV" iptables-nft -t mangle -A CSBENCH-CONNTRACK -m conntrack --ctstate NEW -j RETURN
		;;
	p=*)
		start_bg "agent-$tag" "$SRV" "$server_cpu" "$CACHE/connscope" agent --policy bench-datapath \
			--probability "${cond#p=}" --packet-cap 10 --label-bit 7 --nflog-group 43 --backend nft \
			--metrics-addr "$metrics" --sink "file://$WORK/agent-$tag.pcapng"
		agent_pid=$BG_PID
		wait_for 30 in_ns "$SRV" curl -sf -o /dev/null "http://$metrics/readyz" || die "the agent did not become ready: see $LOGS/agent-$tag.log"
		;;
	esac
	wait_for 10 listening "$http_port" || die "tinyhttp did not start: see $LOGS/tinyhttp-$tag.log"
	wait_for 10 listening 5201 || die "iperf3 -s did not start: see $LOGS/iperf3-$tag.log"
	sleep 0.5

	local bps retr rps errs
	in_ns "$CLI" taskset -c "$client_cpu" iperf3 -c "$SRV_IP" -t "$secs" -J >"$LOGS/iperf3-client-$tag.json" 2>&1 ||
		die "iperf3 -c failed: see $LOGS/iperf3-client-$tag.json"
	read -r bps retr < <(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]
print(int(e["sum_received"]["bits_per_second"]), e["sum_sent"].get("retransmits", 0))' "$LOGS/iperf3-client-$tag.json")
	sleep 0.5
	in_ns "$CLI" taskset -c "$client_cpu" wrk -t1 -c "$wrk_conns" -d "${secs}s" -H 'Connection: close' \
		"http://$SRV_IP:$http_port/" >"$LOGS/wrk-$tag.txt" 2>&1 || die "wrk failed: see $LOGS/wrk-$tag.txt"
	rps=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$LOGS/wrk-$tag.txt")
	errs=$(awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } /Non-2xx/ { n += $NF } END { printf "%d", n }' "$LOGS/wrk-$tag.txt")

	local logged="" lost=""
	if [[ -n $agent_pid ]]; then
		in_ns "$SRV" curl -sf "http://$metrics/metrics" >"$LOGS/agent-$tag.metrics" || true
		logged=$(awk '$1 == "connscope_agent_packets_logged_total" { printf "%d", $2 }' "$LOGS/agent-$tag.metrics")
		lost=$(awk '$1 ~ /^connscope_agent_packets_lost_total/ { n += $2 } END { printf "%d", n }' "$LOGS/agent-$tag.metrics")
		stop_bg "$agent_pid" TERM 30
		rm -f "$WORK/agent-$tag.pcapng"
	fi
	# whether conntrack ran in the server namespace: the connections it holds
	local ct
	ct=$(in_ns "$SRV" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0)
	ns_drop
	# The kernel tears a namespace down in the background (its sockets and
	# conntrack entries): let that finish before the next run measures.
	sleep "$settle"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cond" "$run" "$bps" "$retr" "$rps" "${errs:-0}" "$logged" "$lost" "$ct" >>"$rows"
	log "$cond run $run: iperf3 $(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }') Gbit/s, wrk $rps conn/s (errors ${errs:-0})${logged:+, agent logged $logged, lost $lost}"
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
{
	echo "## Datapath: what the rules cost the traffic"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(kernel_info); load average before $load_before, after $load_after."
	echo "A fresh namespace pair per run (veth, TSO/GSO/GRO off); client tools on core $client_cpu, servers and agent on core $server_cpu."
	echo "iperf3 $(iperf3 --version 2>/dev/null | head -n 1 | awk '{ print $2 }'): \`iperf3 -c SERVER -t $secs\`, one TCP stream, the receiver's rate. wrk: \`wrk -t1 -c $wrk_conns -d ${secs}s -H 'Connection: close'\` against hack/bench/tinyhttp: every request a new TCP connection."
	echo "Agent: \`connscope agent --probability P --packet-cap 10 --label-bit 7 --nflog-group 43 --backend nft --sink file://…\` (all ports, IPv4 and IPv6 rules). conntrack: one conntrack-match rule in an unreferenced chain (conntrack on, no rule runs)."
	echo "$runs runs per condition, interleaved and rotated; median (and every run, in run order)."
	echo
	awk -F'\t' '
	function med(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function runs(s, scale, fmt,   a, n, i, o) {
		n = split(s, a, " "); o = ""
		for (i = 1; i <= n; i++) o = o (i > 1 ? ", " : "") sprintf(fmt, a[i] / scale)
		return o
	}
	function loss(b, v) { return b > 0 ? sprintf("%+.1f%%", 100 * (b - v) / b) : "" }
	NR == 1 { next }
	{
		if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
		bps[$1] = bps[$1] " " $3; rps[$1] = rps[$1] " " $5
		errs[$1] += $6; retr[$1] += $4; if ($9 > ct[$1]) ct[$1] = $9
		if ($7 != "") { logged[$1] += $7; lost[$1] += $8 }
	}
	END {
		for (i = 1; i <= n; i++) { c = order[i]; mb[c] = med(bps[c]); mr[c] = med(rps[c]) }
		print "| condition | iperf3 Gbit/s, median (runs) | loss vs none | loss vs conntrack | new connections/s, median (runs) | loss vs none | loss vs conntrack | wrk errors | iperf3 retransmits | conntrack entries at the end (max) | agent: packets logged, lost |"
		print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
		for (i = 1; i <= n; i++) {
			c = order[i]
			ag = (c in logged) ? sprintf("%d, %d", logged[c], lost[c]) : ""
			printf "| %s | %.2f (%s) | %s | %s | %.0f (%s) | %s | %s | %d | %d | %d | %s |\n", c, mb[c] / 1e9, runs(bps[c], 1e9, "%.2f"), \
				(c == "none" ? "" : loss(mb["none"], mb[c])), ((c == "none" || c == "conntrack") ? "" : loss(mb["conntrack"], mb[c])), \
				mr[c], runs(rps[c], 1, "%.0f"), (c == "none" ? "" : loss(mr["none"], mr[c])), ((c == "none" || c == "conntrack") ? "" : loss(mr["conntrack"], mr[c])), \
				errs[c], retr[c], ct[c], ag
		}
		print ""
		print "A positive loss is a slowdown; a negative one is noise in the agent'"'"'s favour."
		c = "p=0.0001"
		if ((c in seen) && ("none" in seen)) {
			lt = 100 * (mb["none"] - mb[c]) / mb["none"]; lc = 100 * (mr["none"] - mr[c]) / mr["none"]
			printf "\n- Target, at most 1%% loss at probability 0.0001 (vs no rules): throughput %+.1f%% (%s), new connections/s %+.1f%% (%s)\n", lt, (lt <= 1 ? "met" : "MISSED"), lc, (lc <= 1 ? "met" : "MISSED")
			if ("conntrack" in seen) {
				lt = 100 * (mb["conntrack"] - mb[c]) / mb["conntrack"]; lc = 100 * (mr["conntrack"] - mr[c]) / mr["conntrack"]
				printf "- The same against conntrack alone (a Kubernetes node): throughput %+.1f%% (%s), new connections/s %+.1f%% (%s)\n", lt, (lt <= 1 ? "met" : "MISSED"), lc, (lc <= 1 ? "met" : "MISSED")
			}
		}
	}' "$rows"
} >"$report"
write_agent_results
cat "$report"
log "results in $report; raw rows in $rows; logs in $LOGS"
