# agent-lib.sh is sourced by the agent benchmarks (agent-capture.sh,
# agent-datapath.sh, agent-datapath-toggle.sh): network namespaces joined
# by a veth, processes started in them and stopped by PID, and a cleanup
# that runs on every exit.
#
# Everything happens in two namespaces made here (csb-cli-* and csb-srv-*),
# joined by one veth pair with segmentation offloads off, addressed from
# 198.18.0.0/15 (RFC 2544's benchmarking range) on those veths only. No
# rule, route or sysctl of the machine's own namespace is read or changed,
# except that iptables-save (which changes nothing) checks at the end that
# the machine has no rule of the benchmark's policies.
#
# Functions (after bench_init):
#   bench_init NAME        work folder, logs in .cache/bench/agent-out/NAME, the trap
#   ns_pair                make the namespaces and the veth (segmentation
#                          offloads off unless BENCH_OFFLOADS=on); sets CLI, SRV,
#                          CLI_IP, SRV_IP, CLI_DEV, SRV_DEV, CLI_MAC, SRV_MAC
#   ns_drop                remove them (and stop what runs in them first)
#   in_ns NS CMD...        run CMD in namespace NS (nsenter, no /sys remount)
#   start_bg NAME NS CPU CMD...   start CMD in NS pinned to CPU ("" = any) in a
#                          session of its own, in cgroups $BG_CGROUP and
#                          $BG_ACCT when set; sets BG_PID; output in $LOGS/NAME.log
#   cpu_limit_group FRACTION   a cpu cgroup allowed FRACTION of one core (CFS
#                          quota, 100 ms period), removed at exit; sets BG_CGROUP
#   acct_group             a cgroup that only accounts CPU time, removed at
#                          exit; sets BG_ACCT (with cgroup v2 and a CPU limit,
#                          the limit's group)
#   acct_usage_us DIR      CPU time (user+system, µs, exact: the scheduler's
#                          clock, not ticks) of every process that ran in DIR,
#                          children included, since it was made
#   limit_group_procs FROM TO   move the processes of cgroup FROM under the CPU limit TO
#   in_acct DIR NS CPU CMD...  run CMD in the foreground in NS, pinned to CPU
#                          ("" = any), accounted in DIR
#   stop_bg PID [SIGNAL] [SECONDS]   signal PID, wait for it, then SIGKILL its group
#   nflog_bound NS GROUP   true when GROUP is bound in NS (/proc/net/netfilter/nfnetlink_log)
#   iperf3_figures FILE, wrk_figures FILE   the figures of a run's output

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$REPO/.cache/bench
BG_PIDS=()
NAMESPACES=()
CGROUPS=()
BG_CGROUP=""
BG_ACCT=""
# the policy names the benchmarks give the agent; checked on the host at exit
BENCH_POLICIES=(bench-capture bench-datapath)

log() { echo "${BENCH_NAME:-bench}: $*" >&2; }
die() {
	log "$*"
	exit 1
}

bench_init() {
	BENCH_NAME=$1
	# the commit measured: the one checked out when the benchmark started
	# (a commit made while it runs is not what it measures); "+changes"
	# when tracked files differed from it
	BENCH_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)
	[[ $BENCH_COMMIT == none ]] || git -C "$REPO" diff --quiet HEAD 2>/dev/null || BENCH_COMMIT+="+changes"
	[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, iptables, NFLOG)"
	mkdir -p "$CACHE"
	printf '*\n' >"$CACHE/.gitignore" # the cache folder ignores itself
	LOGS=$CACHE/agent-out/$BENCH_NAME
	rm -rf "$LOGS"
	mkdir -p "$LOGS"
	WORK=$(mktemp -d "/tmp/connscope-$BENCH_NAME.XXXXXX")
	HOST_RULES_BEFORE=$(host_policy_rules)
	trap bench_cleanup EXIT
	trap 'log "interrupted"; exit 130' INT TERM HUP
}

# bench_cleanup stops every process started here (by PID, then its
# group), removes the namespaces and the work folder, and checks that the
# machine's own rules hold nothing of the benchmark's policies.
bench_cleanup() {
	local rc=$? pid ns
	trap - EXIT INT TERM HUP
	set +e
	for pid in "${BG_PIDS[@]}"; do
		stop_bg "$pid" TERM 5 2>/dev/null
	done
	for ns in "${NAMESPACES[@]}"; do
		ip netns del "$ns" 2>/dev/null
	done
	local cg
	for cg in "${CGROUPS[@]}"; do
		rmdir "$cg" 2>/dev/null || log "could not remove cgroup $cg"
	done
	[[ -n ${WORK:-} && -d $WORK ]] && rm -rf "$WORK"
	if [[ -n ${HOST_RULES_BEFORE+x} ]]; then
		local after
		after=$(host_policy_rules)
		if [[ $after != "$HOST_RULES_BEFORE" ]]; then
			log "ERROR: the machine's own iptables rules changed during the benchmark:"
			diff <(echo "$HOST_RULES_BEFORE") <(echo "$after") >&2
			rc=1
		fi
	fi
	exit "$rc"
}

# host_policy_rules prints the machine's rules that mention a policy of the
# benchmarks (iptables-save only reads).
host_policy_rules() {
	local prog pat
	pat=$(
		IFS='|'
		echo "${BENCH_POLICIES[*]}"
	)
	for prog in iptables-nft-save ip6tables-nft-save iptables-legacy-save ip6tables-legacy-save; do
		command -v "$prog" >/dev/null || continue
		"$prog" 2>/dev/null | grep -E "connscope policy ($pat)" | sed "s/^/$prog: /" || true
	done
}

in_ns() {
	local ns=$1
	shift
	nsenter --net="/run/netns/$ns" -- "$@"
}

ns_pair() {
	local id
	id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	CLI=csb-cli-$id SRV=csb-srv-$id
	CLI_DEV=csb-c$id SRV_DEV=csb-s$id # up to 15 characters
	CLI_IP=198.18.0.1 SRV_IP=198.18.0.2
	ip netns add "$CLI"
	NAMESPACES+=("$CLI")
	ip netns add "$SRV"
	NAMESPACES+=("$SRV")
	# Made inside the client namespace: the machine's namespace never
	# holds either end.
	ip -n "$CLI" link add "$CLI_DEV" type veth peer name "$SRV_DEV" netns "$SRV"
	local ns dev ip
	for ns in "$CLI" "$SRV"; do
		if [[ $ns == "$CLI" ]]; then dev=$CLI_DEV ip=$CLI_IP; else dev=$SRV_DEV ip=$SRV_IP; fi
		ip -n "$ns" link set lo up
		# one segment is one packet (as on the wire, and as NFLOG logs it),
		# unless BENCH_OFFLOADS=on: the veth's defaults, TSO and GSO on, so
		# a sender's 64 KiB segments cross as one packet each, as a NIC's
		# GRO hands the stack aggregates of the segments it received
		[[ ${BENCH_OFFLOADS:-off} == on ]] || in_ns "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null
		ip -n "$ns" addr add "$ip/30" dev "$dev"
		ip -n "$ns" link set "$dev" up
	done
	SRV_MAC=$(ip -n "$SRV" -o link show "$SRV_DEV" | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
	CLI_MAC=$(ip -n "$CLI" -o link show "$CLI_DEV" | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
	# No ARP during a run.
	ip -n "$CLI" neigh replace "$SRV_IP" lladdr "$SRV_MAC" dev "$CLI_DEV" nud permanent
	ip -n "$SRV" neigh replace "$CLI_IP" lladdr "$CLI_MAC" dev "$SRV_DEV" nud permanent
}

# ns_drop stops the processes still running in the current pair, then
# deletes it.
ns_drop() {
	local pid ns keep=()
	for pid in "${BG_PIDS[@]}"; do
		stop_bg "$pid" TERM 5 2>/dev/null || true
	done
	BG_PIDS=()
	for ns in "${NAMESPACES[@]}"; do
		if [[ $ns == "${CLI:-}" || $ns == "${SRV:-}" ]]; then
			ip netns del "$ns" 2>/dev/null || true
		else
			keep+=("$ns")
		fi
	done
	NAMESPACES=("${keep[@]}")
}

start_bg() {
	local name=$1 ns=$2 cpu=$3
	shift 3
	local pin=()
	[[ -n $cpu ]] && pin=(taskset -c "$cpu")
	# Not a process-group leader (no job control), so setsid does not
	# fork: $! is the program itself once nsenter and taskset have exec'd
	# (and bash, which joins the cgroup first).
	local groups
	groups=$(bg_groups)
	if [[ -n $groups ]]; then
		setsid bash -c 'for g in $1; do echo $$ >"$g/cgroup.procs" || exit 1; done; shift; exec "$@"' _ "$groups" \
			nsenter --net="/run/netns/$ns" -- "${pin[@]}" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	else
		setsid nsenter --net="/run/netns/$ns" -- "${pin[@]}" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
	fi
	BG_PID=$!
	BG_PIDS+=("$BG_PID")
}

# bg_groups: the cgroups a process started now joins (paths hold no spaces).
bg_groups() {
	local g=()
	[[ -n $BG_CGROUP ]] && g+=("$BG_CGROUP")
	[[ -n $BG_ACCT && $BG_ACCT != "$BG_CGROUP" ]] && g+=("$BG_ACCT")
	echo "${g[*]}"
}

in_acct() {
	local dir=$1 ns=$2 cpu=$3
	shift 3
	local pin=()
	[[ -n $cpu ]] && pin=(taskset -c "$cpu")
	bash -c 'echo $$ >"$1/cgroup.procs" || exit 1; shift; exec "$@"' _ "$dir" nsenter --net="/run/netns/$ns" -- "${pin[@]}" "$@"
}

acct_group() {
	local dir
	if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then # v2: cpu.stat's usage_usec is always there
		if [[ -n $BG_CGROUP ]]; then
			BG_ACCT=$BG_CGROUP # a process is in one v2 cgroup: the limit's
			return
		fi
		dir=/sys/fs/cgroup/connscope-$BENCH_NAME-$$-${#CGROUPS[@]}
	elif [[ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]]; then # v1
		dir=/sys/fs/cgroup/cpuacct/connscope-$BENCH_NAME-$$-${#CGROUPS[@]}
	else
		die "no cpuacct (cgroup v1) or cgroup v2 hierarchy: CPU time cannot be accounted here"
	fi
	mkdir "$dir"
	CGROUPS+=("$dir")
	BG_ACCT=$dir
}

# limit_group_procs FROM TO: moves every process of cgroup FROM into the
# cpu cgroup TO (with cgroup v1 they stay in FROM's cpuacct hierarchy).
limit_group_procs() {
	local p rel=${2#/sys/fs/cgroup/cpu}
	rel=${rel#/sys/fs/cgroup}
	for p in $(cat "$1/cgroup.procs"); do
		if ! echo "$p" >"$2/cgroup.procs" 2>/dev/null; then
			kill -0 "$p" 2>/dev/null || continue # it ended
			# A real-time task cannot join a group without a real-time
			# budget (EINVAL): the limit would not hold it.
			die "cannot move PID $p ($(ps -o comm= -p "$p"), $(chrt -p "$p" 2>/dev/null | sed -n 's/.*policy: //p')) into the CPU-limited cgroup $2"
		fi
		# Check: the process is in the limited group (in the cpu
		# hierarchy, with cgroup v1).
		grep -Eq "^[0-9]+:(cpu|cpu,cpuacct|cpuacct,cpu|):$rel\$" "/proc/$p/cgroup" 2>/dev/null ||
			{ kill -0 "$p" 2>/dev/null && die "PID $p is not in the CPU-limited cgroup $2 after the move"; }
	done
}

# is_realtime PID: whether the process runs under a real-time policy.
is_realtime() { chrt -p "$1" 2>/dev/null | grep -Eq 'SCHED_(RR|FIFO)'; }

acct_usage_us() {
	if [[ -f $1/cpuacct.usage ]]; then
		awk '{ printf "%d\n", $1 / 1000 }' "$1/cpuacct.usage"
	else
		awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat"
	fi
}

stop_bg() {
	local pid=$1 sig=${2:-TERM} secs=${3:-10} i
	kill -0 "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null || true
		return 0
	}
	kill -s "$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "PID $pid did not stop on SIG$sig within ${secs}s: SIGKILL to its group"
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	# anything it left in its group (dumpcap under tshark)
	kill -KILL -- "-$pid" 2>/dev/null || true
	local keep=() p
	for p in "${BG_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
	BG_PIDS=("${keep[@]}")
}

cpu_limit_group() {
	local frac=$1 quota dir
	quota=$(awk -v f="$frac" 'BEGIN { printf "%d", f * 100000 }')
	((quota >= 1000)) || die "CPU limit $frac: at least 0.01 of a core"
	if [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then # cgroup v1
		dir=/sys/fs/cgroup/cpu/connscope-$BENCH_NAME-$$-${#CGROUPS[@]}
		mkdir "$dir"
		CGROUPS+=("$dir")
		echo 100000 >"$dir/cpu.cfs_period_us"
		echo "$quota" >"$dir/cpu.cfs_quota_us"
	elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then # cgroup v2
		grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control ||
			die "cgroup v2 without the cpu controller enabled for children: CPU limits are not possible here"
		dir=/sys/fs/cgroup/connscope-$BENCH_NAME-$$-${#CGROUPS[@]}
		mkdir "$dir"
		CGROUPS+=("$dir")
		echo "$quota 100000" >"$dir/cpu.max"
	else
		die "no cpu cgroup controller found: CPU limits are not possible here"
	fi
	BG_CGROUP=$dir
}

nflog_bound() {
	# columns: group, peer portid, queued, copy mode, copy range, flush timeout, use
	in_ns "$1" cat /proc/net/netfilter/nfnetlink_log 2>/dev/null | awk -v g="$2" '$1 == g { f = 1 } END { exit !f }'
}

# wait_for SECONDS CMD...: polls CMD every 0.1 s until it succeeds.
wait_for() {
	local secs=$1 i
	shift
	for ((i = 0; i < secs * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# iperf3_figures FILE: of iperf3 -J's output, the receiver's bits/s and
# bytes and the sender's retransmits.
iperf3_figures() {
	python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]
print(int(e["sum_received"]["bits_per_second"]), int(e["sum_received"]["bytes"]), e["sum_sent"].get("retransmits", 0))' "$1"
}

# wrk_figures FILE: of wrk's output, requests/s, requests and errors
# (socket errors and non-2xx answers).
wrk_figures() {
	awk '/^Requests\/sec:/ { rps = $2 } /requests in/ && !reqs { reqs = $1 }
		/Socket errors:/ { gsub(/,/, ""); errs += $4 + $6 + $8 + $10 } /Non-2xx/ { errs += $NF }
		END { printf "%d %d %d\n", rps, reqs, errs }' "$1"
}

# median of the numbers given
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# build_tools builds connscope and the benchmark programs into $CACHE.
build_tools() {
	log "building connscope, synflood, tinyhttp and bareread into $CACHE"
	(
		cd "$REPO"
		go build -o "$CACHE/connscope" ./cmd/connscope
		go build -o "$CACHE/synflood" ./hack/bench/synflood
		go build -o "$CACHE/tinyhttp" ./hack/bench/tinyhttp
		go build -o "$CACHE/bareread" ./hack/bench/bareread
	)
}

# need_tools CMD...: runs hack/setup-bench.sh once when one is missing.
need_tools() {
	local t missing=0
	for t in "$@"; do
		if [[ $t == /* ]]; then compgen -G "$t" >/dev/null || missing=1; else command -v "$t" >/dev/null || missing=1; fi
	done
	if [[ $missing -eq 1 && ${BENCH_NO_SETUP:-} != 1 ]]; then
		log "installing tools: hack/setup-bench.sh"
		bash "$REPO/hack/setup-bench.sh" >&2 || true
	fi
	for t in "$@"; do
		if [[ $t == /* ]]; then compgen -G "$t" >/dev/null || die "$t is missing: run hack/setup-bench.sh as root"; else command -v "$t" >/dev/null || die "$t is missing: run hack/setup-bench.sh as root"; fi
	done
}

# write_agent_results joins the agent benchmarks' reports that exist into
# .cache/bench/agent-results.md.
write_agent_results() {
	local f parts=()
	for f in "$CACHE"/agent-capture.md "$CACHE"/agent-datapath.md "$CACHE"/agent-datapath-offloads.md \
		"$CACHE"/agent-datapath-toggle{,-offloads}{,-apart}{,-legacy}.md; do
		[[ -s $f ]] && parts+=("$f")
	done
	{
		echo "# connscope agent benchmarks"
		echo
		echo "Written by hack/bench/agent-capture.sh, agent-datapath.sh and agent-datapath-toggle.sh (make bench-agent); each part says when it ran."
		for f in "${parts[@]}"; do
			echo
			cat "$f"
		done
	} >"$CACHE/agent-results.md"
}

# kernel_info: one line on the machine.
kernel_info() {
	echo "kernel $(uname -r), $(nproc) cores ($(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)), $(go version | cut -d' ' -f3), commit $BENCH_COMMIT"
}
