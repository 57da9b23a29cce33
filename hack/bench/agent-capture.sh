#!/usr/bin/env bash
# agent-capture.sh is the agent's capture benchmark (`make bench-agent-capture`,
# part of `make bench`): how many logged packets per second each NFLOG
# reader takes without losing one, side by side on the same traffic:
#
#   connscope agent   --probability 1 --sink file://... (its own rules, its
#                     NFLOG settings: copy range 128, batches of up to 512 in 127 KiB, flush
#                     100 ms, SO_RCVBUFFORCE 8 MiB)
#   ulogd2            NFLOG -> BASE -> PCAP, configured as fairly as it lets
#                     itself be: netlink_socket_buffer_size 8 MiB (it uses
#                     SO_RCVBUFFORCE too; maxsize 8 MiB + 1, as ulogd2
#                     applies a size only when it is below the maximum), netlink_qthreshold 64,
#                     netlink_qtimeout 10 (100 ms), pcap sync=0 (buffered)
#   tshark            tshark -i nflog:G -B 8 -w FILE (dumpcap reads the
#                     group; libpcap sets SO_RCVBUF, capped by the machine's
#                     net.core.rmem_max, and leaves the kernel's batching
#                     defaults)
#
# ulogd2 and tshark read the agent's own rules (iptables-nft-save of a
# running agent, restored into their namespace): the same packets reach
# each reader, headers only (--nflog-size 128).
#
# The traffic: hack/bench/synflood in a client namespace sends SYNs
# (AF_PACKET, 58-byte frames, the next source port each, 64,512 ports in
# turn) over a veth into the server namespace, where nothing listens: each
# SYN opens a conntrack connection (state NEW), is labelled and logged, and
# is answered by a RST that closes it. One reader at a time, a fresh reader
# (and a fresh namespace pair per reader) for each step: rates from
# BENCH_CAPTURE_RATES (BENCH_CAPTURE_LIMITED_RATES under a CPU limit) for
# BENCH_CAPTURE_SECONDS each, then a flood (as fast
# as the generator's core allows). The generator and the whole kernel path
# (veth, conntrack, the rules, NFLOG's batching, the RSTs) run on core
# BENCH_GEN_CPU; the reader runs alone on BENCH_READER_CPU.
#
# For each step:
#   sent      packets the veth accepted (synflood's count)
#   logged    the NFLOG rule's packet counter (iptables-nft-save -c): what the
#             kernel logged to the group
#   written   packets in the reader's file after it stopped (bareread
#             -decode: decodable TCP records)
#   loss      logged - written (the reader's loss), and sent - logged
#             (lost before the rule: should be 0)
#   CPU       user+system time of the reader and every process it started
#             (the agent's iptables runs, tshark's dumpcap) during the step
#             (send and drain), from a cpuacct cgroup of the reader's own
#             (exact: the scheduler's clock, not ticks), also per packet
#             written: µs per packet = CPU seconds per million packets
# plus what each reader says of its losses: the agent's
# connscope_agent_packets_lost_total{reason} and nflog_enobufs_total, the
# netlink socket's drop counter (/proc/net/netlink, batches dropped because
# the receive buffer was full), ulogd2's "We are losing events", tshark's
# "packets dropped".
#
# "Max zero-loss rate" is the highest step (all lower steps too) where
# written = logged = sent (packets "held at stop", see the report, aside).
# Paced steps stop when the generator falls 10% short of the rate, or after
# two lossy steps in a row.
#
# Rounds: the whole ladder of every pass runs BENCH_CAPTURE_ROUNDS times,
# the readers in the given order in odd rounds and in the reverse order in
# even ones. This VM's speed drifts over minutes (the same reader's CPU per
# packet has differed by half between runs an hour apart), and readers
# measured one after the other take the drift as a difference between
# them: each round compares the readers over the same few minutes, half
# the rounds with the agent first and half with ulogd2 first, and the
# summary gives each round's ratios and their median.
#
# Two passes by default: the reader with a whole core, and the reader held
# to 0.02 of a core by a cgroup CPU quota, as a DaemonSet pod's CPU limit
# would (applied once the reader has started, so that the agent's start,
# a few dozen iptables runs, is not measured and takes no half minute).
# On a machine whose one generator core offers ~100-150k SYN/s, no
# reader with a whole core falls behind, and the first pass compares CPU
# per packet only; the second makes the reader the bottleneck, so that the
# highest zero-loss rate and the rate written at the flood tell the readers
# apart. (A throttled reader finds a long backlog at each wakeup and spends
# far less CPU per packet than one woken for every batch: compare CPU per
# packet within a pass, not across passes.) The summary also gives, for
# each pass, the ratio of CPU per packet, ulogd2 / agent, at every paced
# rate both wrote whole: on a machine shared with other work this moves
# far less than the rates do, as it does not count time spent waiting for
# a core.
#
# Environment:
#   BENCH_CAPTURE_RATES    packets/s of the paced steps with a whole core (default "2000 5000 10000 20000 30000 50000 70000 100000 120000 150000 200000 300000 400000 800000")
#   BENCH_CAPTURE_LIMITED_RATES  packets/s of the paced steps under a CPU
#                          limit, finer where the readers reach their
#                          limit (default 20000 to 160000 by 10000, then
#                          180000 200000 250000 300000)
#   BENCH_CAPTURE_SECONDS  seconds per step (default 3)
#   BENCH_CAPTURE_READERS  which readers, in order (default "agent ulogd2 tshark")
#   BENCH_CAPTURE_ROUNDS   rounds of every pass, the readers' order reversed
#                          in even rounds (default 3)
#   BENCH_CAPTURE_FLOOD    0 to skip the flood step (default 1)
#   BENCH_CAPTURE_READER_LIMITS  passes, each with the reader's CPU limited
#                          to this fraction of a core (a cgroup CFS quota,
#                          as a pod's CPU limit), "none" for a whole core
#                          (default "none 0.02")
#   BENCH_GEN_CPU          core of the generator (default 0)
#   BENCH_READER_CPU       core of the reader (default 1; 0 on one core)
#   BENCH_KEEP_FILES=1     keep each reader's capture in the log folder
#   BENCH_NO_SETUP=1       do not run hack/setup-bench.sh when a tool is missing
#
# Output: Markdown on stdout and in .cache/bench/agent-capture.md (and, with
# agent-datapath.sh's, in .cache/bench/agent-results.md); raw rows in
# .cache/bench/agent-out/agent-capture/steps.tsv, readers' logs next to it.
# Exit status 0 when every step ran (targets met or not: the table says).
source "$(dirname "${BASH_SOURCE[0]}")/agent-lib.sh"

rates=${BENCH_CAPTURE_RATES:-2000 5000 10000 20000 30000 50000 70000 100000 120000 150000 200000 300000 400000 800000}
limited_rates=${BENCH_CAPTURE_LIMITED_RATES:-20000 30000 40000 50000 60000 70000 80000 90000 100000 110000 120000 130000 140000 150000 160000 180000 200000 250000 300000}
secs=${BENCH_CAPTURE_SECONDS:-3}
readers=${BENCH_CAPTURE_READERS:-agent ulogd2 tshark}
rounds=${BENCH_CAPTURE_ROUNDS:-3}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "BENCH_CAPTURE_ROUNDS=$rounds: a number of rounds, at least 1"
for reader in $readers; do
	case $reader in agent | ulogd2 | tshark) ;; *) die "unknown reader $reader (agent, ulogd2, tshark)" ;; esac
done
flood=${BENCH_CAPTURE_FLOOD:-1}
limits=${BENCH_CAPTURE_READER_LIMITS:-none 0.02}
gen_cpu=${BENCH_GEN_CPU:-0}
if [[ $(nproc) -ge 2 ]]; then reader_cpu=${BENCH_READER_CPU:-1}; else reader_cpu=${BENCH_READER_CPU:-0}; fi
group=42
label_bit=7
packet_cap=10
metrics=127.0.0.1:19477
dport=80

bench_init agent-capture
need_tools ulogd /usr/lib/*/ulogd/ulogd_output_PCAP.so tshark iptables-nft iptables-nft-save iptables-nft-restore nsenter taskset ethtool curl
build_tools
ulogd_dir=$(dirname "$(compgen -G '/usr/lib/*/ulogd/ulogd_output_PCAP.so' | head -n 1)")

agent_args=(agent --policy bench-capture --probability 1 --packet-cap "$packet_cap" --label-bit "$label_bit"
	--nflog-group "$group" --ports "$dport" --backend nft --metrics-addr "$metrics")

# nflog_rule_count prints the packet counter of the NFLOG rule in the
# server namespace (0 when there is none).
nflog_rule_count() {
	in_ns "$SRV" iptables-nft-save -c -t mangle | awk '/-j NFLOG/ { gsub(/[\[\]]/, "", $1); split($1, c, ":"); n += c[1] } END { printf "%d\n", n }'
}

# reader_socket prints "Rmem Drops" of the socket bound to the group.
reader_socket() {
	local portid
	portid=$(in_ns "$SRV" awk -v g="$group" '$1 == g { print $2 }' /proc/net/netfilter/nfnetlink_log)
	[[ -n $portid ]] || {
		echo "0 0"
		return
	}
	in_ns "$SRV" awk -v p="$portid" '$2 == 12 && $3 == p { print $5, $9; f = 1 } END { if (!f) print "0 0" }' /proc/net/netlink
}

# drained: the kernel holds no batch for the group and the reader's
# receive queue is empty.
drained() {
	local q rmem
	q=$(in_ns "$SRV" awk -v g="$group" '$1 == g { print $3 }' /proc/net/netfilter/nfnetlink_log)
	read -r rmem _ < <(reader_socket)
	[[ ${q:-0} -eq 0 && ${rmem:-0} -eq 0 ]]
}

agent_metric() { # NAME [LABEL]: one value from the scrape in $WORK/metrics
	awk -v n="$1" -v l="${2:-}" '$1 == n || (l != "" && index($1, n "{") == 1 && index($1, l)) { printf "%d\n", $2; exit }' "$WORK/metrics"
}

# The agent's rules, for the readers that install none.
capture_agent_rules() {
	ns_pair
	start_bg rules-agent "$SRV" "" "$CACHE/connscope" "${agent_args[@]}" --sink "file://$WORK/rules.pcapng"
	local pid=$BG_PID
	wait_for 30 in_ns "$SRV" curl -sf -o /dev/null "http://$metrics/readyz" || die "the agent did not become ready: see $LOGS/rules-agent.log"
	in_ns "$SRV" iptables-nft-save -t mangle | grep -v '^#' >"$WORK/rules.v4"
	stop_bg "$pid" TERM 20
	ns_drop
	cp "$WORK/rules.v4" "$LOGS/rules.v4"
	grep -q -- '-j NFLOG' "$WORK/rules.v4" || die "no NFLOG rule in the agent's rule set: see $LOGS/rules.v4"
}

write_ulogd_conf() { # FILE PCAP LOG
	cat >"$1" <<EOF
# ulogd2 for agent-capture.sh: NFLOG group $group -> pcap, as fair to it as
# its options allow (see the header of agent-capture.sh).
[global]
logfile="$3"
loglevel=5
plugin="$ulogd_dir/ulogd_inppkt_NFLOG.so"
plugin="$ulogd_dir/ulogd_raw2packet_BASE.so"
plugin="$ulogd_dir/ulogd_output_PCAP.so"
stack=log1:NFLOG,base1:BASE,pcap1:PCAP

[log1]
group=$group
netlink_socket_buffer_size=8388608
netlink_socket_buffer_maxsize=8388609
netlink_qthreshold=64
netlink_qtimeout=10

[pcap1]
file="$2"
sync=0
EOF
}

steps=$LOGS/steps.tsv
printf 'limit\treader\ttarget\tsent\tseconds\tlogged\twritten\tcpu_us\twall\tseq_gap\tqueue_full\tenobufs\tsock_drops\theld_at_stop\tnote\tround\n' >"$steps"

# one_step READER TARGET(0 = flood) TAG (in round $round)
one_step() {
	local reader=$1 target=$2 tag=$3 pid out sig=TERM note=""
	out=$WORK/$reader-$tag
	case $reader in
	agent)
		start_bg "$reader-$tag" "$SRV" "$reader_cpu" "$CACHE/connscope" "${agent_args[@]}" --sink "file://$out.pcapng"
		pid=$BG_PID
		wait_for 30 in_ns "$SRV" curl -sf -o /dev/null "http://$metrics/readyz" || die "the agent did not become ready: see $LOGS/$reader-$tag.log"
		# Its start (rules installed, then those of earlier runs looked
		# for: a dozen iptables runs) is not what the step measures.
		wait_for 30 grep -q "no rules of an earlier run" "$LOGS/$reader-$tag.log" || die "the agent did not finish starting: see $LOGS/$reader-$tag.log"
		;;
	ulogd2)
		write_ulogd_conf "$WORK/ulogd.conf" "$out.pcap" "$LOGS/$reader-$tag.ulogd.log"
		start_bg "$reader-$tag" "$SRV" "$reader_cpu" ulogd -c "$WORK/ulogd.conf"
		pid=$BG_PID
		# ulogd2 makes itself SCHED_RR at priority 99 when it starts: it
		# would preempt everything on its core, and a real-time task cannot
		# join a cgroup v1 cpu group without a real-time budget, so the CPU
		# limit would not hold it. A DaemonSet pod gets no real-time
		# priority (it needs CAP_SYS_NICE, and cgroups without an RT budget
		# refuse it): every reader runs SCHED_OTHER, as the agent does.
		wait_for 10 is_realtime "$pid" || log "ulogd2 (PID $pid) did not become real-time: left as it is"
		chrt -o -p 0 "$pid" || die "cannot make ulogd2 (PID $pid) SCHED_OTHER"
		;;
	tshark)
		start_bg "$reader-$tag" "$SRV" "$reader_cpu" tshark -i "nflog:$group" -B 8 -w "$out.pcapng"
		pid=$BG_PID
		sig=INT
		;;
	esac
	wait_for 30 nflog_bound "$SRV" "$group" || die "$reader did not bind NFLOG group $group: see $LOGS/$reader-$tag.log"
	sleep 0.5 # the reader settles (tshark's dumpcap starts after the bind)
	# The CPU limit applies from here: a reader's start (the agent's: a
	# few dozen iptables runs) is not what the step measures, and at 2% of
	# a core it would take half a minute.
	local measure=$BG_ACCT
	if [[ -n $limit_dir ]]; then
		limit_group_procs "$BG_ACCT" "$limit_dir"
		[[ -f /sys/fs/cgroup/cgroup.controllers ]] && measure=$limit_dir # v2: the processes moved
	fi
	local c0 t0 w0 c1 t1 w1 gen sent seconds
	c0=$(nflog_rule_count)
	t0=$(acct_usage_us "$measure")
	w0=$(date +%s.%N)
	gen=$(in_ns "$CLI" taskset -c "$gen_cpu" "$CACHE/synflood" -iface "$CLI_DEV" -dst-mac "$SRV_MAC" \
		-src "$CLI_IP" -dst "$SRV_IP" -dport "$dport" -rate "$target" -duration "${secs}s")
	sent=$(grep -o '"sent":[0-9]*' <<<"$gen" | cut -d: -f2)
	seconds=$(grep -o '"seconds":[0-9.]*' <<<"$gen" | cut -d: -f2)
	# the kernel flushes a partial batch after its timeout (1 s for tshark's
	# default); then wait until the reader has read everything.
	sleep 1.2
	wait_for 30 drained || note="not drained after 30 s"
	sleep 0.3
	t1=$(acct_usage_us "$measure")
	w1=$(date +%s.%N)
	c1=$(nflog_rule_count)
	local rmem drops seq_gap="" queue_full="" enobufs=""
	read -r rmem drops < <(reader_socket)
	if [[ $reader == agent ]]; then
		in_ns "$SRV" curl -sf "http://$metrics/metrics" >"$WORK/metrics" || true
		cp "$WORK/metrics" "$LOGS/$reader-$tag.metrics"
		seq_gap=$(agent_metric connscope_agent_packets_lost_total 'reason="kernel_seq_gap"')
		queue_full=$(agent_metric connscope_agent_packets_lost_total 'reason="queue_full"')
		enobufs=$(agent_metric connscope_agent_nflog_enobufs_total)
	fi
	stop_bg "$pid" "$sig" 30
	local file written held=0
	file=$(compgen -G "$out.pcap*" | head -n 1 || true)
	written=0
	if [[ -n $file && -s $file ]]; then
		written=$("$CACHE/bareread" -decode "$file" 2>>"$LOGS/$reader-$tag.log" | awk '{ print $4 }')
		# Where are the missing packets? The generator uses the source
		# ports in turn, and the kernel logs in order: the ports after the
		# last one written were lost at the end of the run.
		local logged=$((c1 - c0))
		if ((written < logged && written > 0 && logged == sent && logged - written < 64512)); then
			local last tail
			last=$(tshark -r "$file" -T fields -e tcp.srcport 2>/dev/null | tail -n 1)
			if [[ -n $last ]]; then
				tail=$(((1024 + (logged - 1) % 64512 - last + 64512) % 64512))
				note="${note:+$note; }missing: $tail at the end of the run, $((logged - written - tail)) before"
				# With no batch dropped by the kernel (socket drops, the
				# agent's sequence gaps), the last packets reached the
				# reader's socket and were still held in the reader when it
				# was stopped: not lost while it ran.
				if [[ ${drops:-0} -eq 0 && ${seq_gap:-0} -eq 0 && $tail -le $((logged - written)) ]]; then
					held=$tail
				fi
			fi
		fi
		[[ ${BENCH_KEEP_FILES:-} == 1 ]] && cp "$file" "$LOGS/"
		rm -f "$file"
	fi
	case $reader in
	ulogd2) grep -q 'losing events' "$LOGS/$reader-$tag.ulogd.log" 2>/dev/null && note="${note:+$note; }ulogd2: We are losing events" ;;
	tshark)
		local d
		d=$(grep -o '[0-9]* packets\? dropped' "$LOGS/$reader-$tag.log" | head -n 1 | cut -d' ' -f1 || true)
		[[ -n $d && $d != 0 ]] && note="${note:+$note; }tshark: $d packets dropped"
		;;
	esac
	local wall
	wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$limit" "$reader" "$target" "$sent" "$seconds" "$((c1 - c0))" \
		"$written" "$((t1 - t0))" "$wall" "$seq_gap" "$queue_full" "$enobufs" "$drops" "$held" "$note" "$round" >>"$steps"
	log "round $round: $reader$([[ $limit != none ]] && echo " limited to $limit core") at $( ((target > 0)) && echo "$target/s" || echo flood): sent $sent in ${seconds%???????}s, logged $((c1 - c0)), written $written, CPU $(awk -v t=$((t1 - t0)) 'BEGIN { printf "%.3f", t / 1e6 }')s ($(awk -v t=$((t1 - t0)) -v w="$written" 'BEGIN { printf "%.2f", (w > 0 ? t / w : 0) }') µs/packet)${note:+ ($note)}"
	LAST_ACHIEVED=$(awk -v s="$sent" -v t="$seconds" 'BEGIN { printf "%d", (t > 0 ? s / t : 0) }')
	LAST_ZERO=0
	[[ $((written + held)) -eq $((c1 - c0)) && $((c1 - c0)) -eq $sent ]] && LAST_ZERO=1
	return 0
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "the agent's rules, for ulogd2 and tshark"
capture_agent_rules
for ((round = 1; round <= rounds; round++)); do
	order=$readers
	((round % 2 == 0)) && order=$(tr ' ' '\n' <<<"$readers" | tac | tr '\n' ' ')
	for limit in $limits; do
		BG_CGROUP="" limit_dir=""
		if [[ $limit != none ]]; then
			cpu_limit_group "$limit"
			limit_dir=$BG_CGROUP BG_CGROUP="" # readers join it once started
		fi
		for reader in $order; do
			BG_ACCT=""
			acct_group
			ns_pair
			# the server answers every SYN with a RST; the client needs none of them
			in_ns "$CLI" iptables-nft -t raw -A PREROUTING -p tcp --tcp-flags RST RST -j DROP
			[[ $reader == agent ]] || in_ns "$SRV" iptables-nft-restore <"$WORK/rules.v4"
			lossy=0
			ladder=$rates
			[[ $limit == none ]] || ladder=$limited_rates
			for rate in $ladder; do
				one_step "$reader" "$rate" "r$round-$limit-$rate"
				if ((LAST_ACHIEVED < rate * 9 / 10)); then
					log "the generator reached $LAST_ACHIEVED/s of $rate/s: no higher paced step"
					break
				fi
				if [[ $LAST_ZERO == 1 ]]; then lossy=0; else lossy=$((lossy + 1)); fi
				if ((lossy == 2)); then
					log "$reader lost packets at two steps in a row: no higher paced step"
					break
				fi
			done
			[[ $flood == 1 ]] && one_step "$reader" 0 "r$round-$limit-flood"
			ns_drop
		done
	done
done
BG_CGROUP="" BG_ACCT=""
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the report ----
report=$CACHE/agent-capture.md
{
	echo "## Capture: NFLOG readers under a SYN flood"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(kernel_info); load average before $load_before, after $load_after."
	echo
	echo "- Traffic: hack/bench/synflood (AF_PACKET, qdisc bypassed, 58-byte SYNs with MSS, 64,512 source ports in turn, one closed destination port: every SYN is a new conntrack connection, answered by a RST) from a client namespace over a veth (TSO/GSO/GRO off) to a server namespace. Generator and the whole kernel path (veth, conntrack, rules, NFLOG batching, RSTs) on core $gen_cpu; the reader alone on core $reader_cpu."
	echo "- Steps of ${secs} s at $rates packets/s with a whole core, at $limited_rates packets/s under a CPU limit (stopping when the generator falls 10% short, or after two lossy steps in a row), then a flood. A fresh reader for each step, a fresh namespace pair for each reader. $rounds round(s) of every pass, the readers in the order $readers in odd rounds and reversed in even ones."
	echo "- Passes, by the reader's CPU limit: $(awk '{ for (i = 1; i <= NF; i++) printf "%s%s", (i > 1 ? ", " : ""), ($i == "none" ? "none (a whole core)" : $i " of a core (a cgroup CFS quota over 100 ms periods, as a pod'"'"'s CPU limit)") }' <<<"$limits")."
	echo "- Rules: the agent's (probability 1, packet cap $packet_cap, --ports $dport, --nflog-size 128, group $group, iptables-nft); ulogd2 and tshark read the same rule set, restored from the agent's iptables-nft-save ($(grep -c -- '^-A' "$WORK/rules.v4") rules)."
	echo "- connscope agent: \`connscope ${agent_args[*]} --sink file://…pcapng\` (copy range 128; kernel batches of up to 512 packets in a 127 KiB buffer, or 100 ms; SO_RCVBUFFORCE 8 MiB, 16 MiB granted)."
	echo "- ulogd2 $(dpkg-query -W -f='${Version}' ulogd2 2>/dev/null): \`stack=log1:NFLOG,base1:BASE,pcap1:PCAP\`, netlink_socket_buffer_size=8388608 with netlink_socket_buffer_maxsize=8388609 (SO_RCVBUFFORCE; ulogd2 applies a size only below the maximum, so 8 MiB and no growth, as the agent), netlink_qthreshold=64, netlink_qtimeout=10 (100 ms), pcap sync=0 (buffered writes). It has no option for the kernel's batch buffer, which stays at one page (about 16 packets of this size per batch)."
	echo "- tshark $(tshark --version 2>/dev/null | head -n 1 | awk '{ print $3 }'): \`tshark -i nflog:$group -B 8 -w FILE\` (dumpcap reads the group; libpcap sets SO_RCVBUF, capped by net.core.rmem_max = $(cat /proc/sys/net/core/rmem_max), and leaves the kernel's batching defaults: 100 packets or 1 s, one page)."
	echo "- sent: packets the veth accepted; logged: the NFLOG rule's counter (what the kernel logged to the group); written: TCP records in the reader's file after it stopped; reader loss = logged - written; held at stop: packets missing from the end of the file only (the source ports are sent in turn) while the kernel dropped no batch (socket drops 0, no sequence gap): they reached the reader's socket and the reader still held them when stopped (tshark: dumpcap keeps the tail of the last batch it read until more arrive), so they do not count against zero loss; CPU: user+system time of the reader and the processes it started (the agent's iptables runs, tshark's dumpcap), from a cpuacct cgroup (exact), over the step (send and drain); µs per packet written = CPU seconds per million packets; CPU % is of one core over the send time."
	echo
	echo "### Every step"
	echo
	awk -F'\t' -v k=1e6 '
	BEGIN {
		print "| round | CPU limit | reader | offered | sent rate | sent | logged (rule) | written | reader loss (of which held at stop) | lost before the rule | reader CPU s | CPU % while sending | CPU µs per packet | agent: seq gap, queue full, ENOBUFS | socket drops (batches) | note |"
		print "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"
	}
	NR == 1 { next }
	{
		rate = ($3 == 0 ? "flood" : sprintf("%d k/s", $3 / 1000))
		sr = ($5 > 0 ? $4 / $5 : 0)
		loss = $6 - $7; pathloss = $4 - $6
		cpu = $8 / k
		lost = ($2 == "agent") ? sprintf("%d, %d, %d", $10, $11, $12) : ""
		printf "| %s | %s | %s | %s | %.0f k/s | %d | %d | %d | %d (%.2f%%)%s | %d | %.2f | %.0f%% | %.2f | %s | %d | %s |\n", $16, ($1 == "none" ? "none" : $1 " core"), $2, rate, sr / 1000, $4, $6, $7, loss, ($6 > 0 ? 100 * loss / $6 : 0), ($14 > 0 ? sprintf(" (%d)", $14) : ""), pathloss, cpu, ($5 > 0 ? 100 * cpu / $5 : 0), ($7 > 0 ? 1e6 * cpu / $7 : 0), lost, $13, $15
	}' "$steps"
	echo
	echo "### Summary"
	echo
	awk -F'\t' -v k=1e6 '
	NR == 1 { next }
	{
		# per limit, round and reader
		rd = $16; key = $1 SUBSEP rd SUBSEP $2; lr = $1 SUBSEP rd
		if (!(key in seen)) { seen[key] = 1; order[++n] = key; ok[key] = 1 }
		if (!(lr in lrseen)) { lrseen[lr] = 1; lrorder[++nlr] = lr }
		if (!($1 in lseen)) { lseen[$1] = 1; lorder[++nl] = $1 }
		# zero loss: everything sent was logged and written, or held by
		# the reader at stop with no batch dropped by the kernel
		zero = ($7 + $14 == $6 && $6 == $4)
		if ($3 > 0) {
			if (zero && $7 > 0) pus[key SUBSEP $3] = 1e6 * $8 / k / $7
			if (zero && ok[key]) maxz[key] = $3
			if (!zero) { ok[key] = 0; lossy[key] = lossy[key] (lossy[key] == "" ? "" : ", ") ($3 / 1000) " k" }
			else if (!ok[key]) clean_after[key] = clean_after[key] (clean_after[key] == "" ? "" : ", ") ($3 / 1000) " k"
		} else {
			fl[key] = 1; fsent[key] = $5 > 0 ? $4 / $5 : 0; flog[key] = $5 > 0 ? $7 / $5 : 0
			floss[key] = $6 - $7; flpct[key] = $6 > 0 ? 100 * ($6 - $7) / $6 : 0
			fzero[key] = zero && ok[key]; flossy[key] = !zero
			fcpupct[key] = $5 > 0 ? 100 * $8 / k / $5 : 0
			fus[key] = $7 > 0 ? 1e6 * $8 / k / $7 : 0
		}
	}
	function zr(key) { return (fl[key] && fzero[key]) ? fsent[key] : ((key in maxz) ? maxz[key] : 0) }
	function verdict(r) { return r >= 2 ? "met" : "MISSED" }
	function lim(l) { return l == "none" ? "Whole core each" : "CPU limit " l " of a core each" }
	# median and list of the values v[1..m], sorted in place
	function med(v, m,   i, j, x) {
		for (i = 2; i <= m; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
		return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
	}
	function vlist(v, m,   i, out) { out = ""; for (i = 1; i <= m; i++) out = out sprintf("%s%.2f×", (i > 1 ? ", " : ""), v[i]); return out }
	END {
		print "| CPU limit | round | reader | max zero-loss rate (every step up to it clean) | steps with loss | sent rate at flood | written rate at flood | loss at flood | reader CPU at flood | CPU µs per packet at flood |"
		print "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"
		for (i = 1; i <= n; i++) {
			key = order[i]; split(key, kk, SUBSEP)
			mz = (key in maxz) ? sprintf("%d k/s", maxz[key] / 1000) : "none (lost at the first step)"
			if (fl[key] && fzero[key]) mz = sprintf("≥ %.0f k/s (the flood, no loss)", fsent[key] / 1000)
			ls = lossy[key] (fl[key] && flossy[key] ? (lossy[key] == "" ? "" : ", ") "flood" : "")
			if (clean_after[key] != "") ls = ls " (clean again at " clean_after[key] ")"
			l = (kk[1] == "none" ? "none" : kk[1] " core")
			if (fl[key])
				printf "| %s | %s | %s | %s | %s | %.0f k/s | %.0f k/s | %d (%.2f%%) | %.0f%% of a core | %.2f |\n", l, kk[2], kk[3], mz, ls, fsent[key] / 1000, flog[key] / 1000, floss[key], flpct[key], fcpupct[key], fus[key]
			else
				printf "| %s | %s | %s | %s | %s | | | | | |\n", l, kk[2], kk[3], mz, ls
		}
		print ""
		print "Each round, agent against ulogd2 (the same few minutes):"
		print ""
		for (j = 1; j <= nlr; j++) {
			split(lrorder[j], lk, SUBSEP); l = lk[1]; rd = lk[2]
			a = l SUBSEP rd SUBSEP "agent"; u = l SUBSEP rd SUBSEP "ulogd2"
			if (!(a in seen) || !(u in seen)) continue
			za = zr(a); zu = zr(u)
			printf "- %s, round %s:", lim(l), rd
			if (fl[a] && fzero[a] && fl[u] && fzero[u]) {
				printf " neither the agent nor ulogd2 lost a packet up to the flood (%.0f k/s and %.0f k/s): the generator set the rate, not the readers, so rates do not separate them.", fsent[a] / 1000, fsent[u] / 1000
			} else if (ok[a] && ok[u] && !(fl[a] && flossy[a]) && !(fl[u] && flossy[u])) {
				printf " neither the agent nor ulogd2 lost a packet at any step (up to %d and %d k/s): the generator set the rate, not the readers.", za / 1000, zu / 1000
			} else if (zu > 0) {
				printf " max zero-loss rate, agent / ulogd2: %d / %d k/s = %.2f×.", za / 1000, zu / 1000, za / zu
				zrat[l, ++nz[l]] = za / zu
			} else {
				printf " ulogd2 lost packets at every step."
			}
			if (fl[a] && fl[u] && flossy[a] && flossy[u] && flog[u] > 0) {
				printf " Both lost at the flood, so what each wrote there is its capacity at this CPU limit: agent / ulogd2 = %.0f / %.0f k/s = %.2f×.", flog[a] / 1000, flog[u] / 1000, flog[a] / flog[u]
				crat[l, ++nc[l]] = flog[a] / flog[u]
			}
			if (fus[a] > 0 && fus[u] > 0) {
				printf " CPU per packet at the flood, ulogd2 / agent: %.2f / %.2f µs = %.2f×.", fus[u], fus[a], fus[u] / fus[a]
				frat[l, ++nf[l]] = fus[u] / fus[a]
			}
			print ""
		}
		# CPU per packet at the same paced rates of the same round, where
		# both wrote everything
		for (r in pus) {
			split(r, rr, SUBSEP)
			if (rr[3] != "agent" || !((rr[1] SUBSEP rr[2] SUBSEP "ulogd2" SUBSEP rr[4]) in pus) || pus[r] <= 0) continue
			prat[rr[1], ++np[rr[1]]] = pus[rr[1] SUBSEP rr[2] SUBSEP "ulogd2" SUBSEP rr[4]] / pus[r]
		}
		print ""
		print "Over the rounds (median, then each round'"'"'s ratio in order of size):"
		print ""
		for (j = 1; j <= nl; j++) {
			l = lorder[j]; delete v
			printf "- %s:", lim(l)
			if (nz[l] > 0) {
				for (i = 1; i <= nz[l]; i++) v[i] = zrat[l, i]
				m = med(v, nz[l])
				printf " max zero-loss rate, agent / ulogd2: median %.2f× (%s; target ≥ 2×: %s).", m, vlist(v, nz[l]), verdict(m)
			} else if (nf[l] > 0) {
				for (i = 1; i <= nf[l]; i++) v[i] = frat[l, i]
				m = med(v, nf[l])
				printf " no round separated the readers by rate; CPU per packet at the flood, ulogd2 / agent: median %.2f× (%s; target ≥ 2×: %s).", m, vlist(v, nf[l]), verdict(m)
			}
			if (nc[l] > 0) {
				delete v; for (i = 1; i <= nc[l]; i++) v[i] = crat[l, i]
				printf " Capacity at the flood, agent / ulogd2: median %.2f× (%s).", med(v, nc[l]), vlist(v, nc[l])
			}
			if (nf[l] > 0 && nz[l] > 0) {
				delete v; for (i = 1; i <= nf[l]; i++) v[i] = frat[l, i]
				printf " CPU per packet at the flood, ulogd2 / agent: median %.2f× (%s).", med(v, nf[l]), vlist(v, nf[l])
			}
			if (np[l] > 0) {
				delete v; for (i = 1; i <= np[l]; i++) v[i] = prat[l, i]
				printf " CPU per packet at the %d paced steps both wrote whole, ulogd2 / agent: median %.2f×, %.2f× to %.2f×.", np[l], med(v, np[l]), v[1], v[np[l]]
			}
			print ""
		}
	}' "$steps"
} >"$report"
write_agent_results
cat "$report"
log "results in $report; raw rows in $steps; logs in $LOGS"
