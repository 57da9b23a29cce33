#!/usr/bin/env bash
# run.sh is the engine benchmark (`make bench`): `connscope classify` against
# the floor of reading the file and against the usual tools that analyse TCP
# connections in a capture, on one synthetic capture, one core each.
#
# It builds connscope, gencap and bareread into .cache/bench (never
# committed: the folder ignores itself), generates the capture once (cached
# by its parameters and by gencap's source), then times each tool with GNU
# time pinned to one core (taskset), so that "per core" is what it says:
#
#   cat FILE > /dev/null                          page cache read, for reference
#   bareread FILE                                 the floor: Reader.NextFrame over the file
#   bareread -decode FILE                         Reader.Next: link, IP, TCP headers into records
#   tcpdump -nr FILE 'less 0'                     libpcap's read loop (what every peer reads with),
#                                                 a filter that matches nothing, so nothing printed
#   connscope classify --format radar --stats     the engine
#   tshark -q -z conv,tcp -r FILE                 Wireshark's TCP conversations
#   argus -r FILE -w X && ra -r X                 argus flow records, both parts timed together
#   tcptrace -n FILE                              per-connection analysis (no graphs without -G)
#
# argus and tcptrace are slow: by default they read a prefix of the capture
# (the first BENCH_PREFIX_PACKETS packets, written by gencap alongside the
# capture), and connscope reads that prefix too so that each ratio compares
# the same input. The table says which input each row read.
#
# The table (Markdown, also written to .cache/bench/results.md) gives wall
# and CPU (user+sys) seconds, packets per CPU second ("per core", as each
# run has one core), peak RSS, and connscope's standing against each row.
# Bytes per open connection = (peak RSS of connscope on the capture - peak
# RSS on a tiny capture) / peak_open_connections from connscope's --stats.
# Fast rows (cat, bareread, decode, libpcap, connscope) run BENCH_RUNS
# times, interleaved in rounds, and keep the run with the least CPU time
# (the note gives the range and median of all); peers run once. GNU time reports CPU and wall
# time to 0.01 s.
#
# Environment:
#   BENCH_PACKETS         packets in the capture (default 5000000; e.g. 500000 for a quick run)
#   BENCH_SEED            gencap's seed (default 1)
#   BENCH_LINKTYPE        101 raw IP (default) or 1 Ethernet
#   BENCH_PREFIX_PACKETS  packets read by argus and tcptrace (default 1000000; 0 = the whole capture)
#   BENCH_RUNS            runs of each fast row (default 3)
#   BENCH_CPU             the core to pin to (default the last one)
#   BENCH_NO_SETUP=1      do not run hack/setup-bench.sh when a peer is missing
#
# Exit status: 0 when every row ran (targets met or not: the table says);
# 1 when a tool failed or could not be built.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# the commit measured: the one checked out at the start ("+changes" when
# tracked files differed from it), not one made while the benchmark runs
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo none)
[[ $commit == none ]] || git -C "$repo" diff --quiet HEAD 2>/dev/null || commit+="+changes"
cache=$repo/.cache/bench
out=$cache/out
packets=${BENCH_PACKETS:-5000000}
seed=${BENCH_SEED:-1}
linktype=${BENCH_LINKTYPE:-101}
prefix=${BENCH_PREFIX_PACKETS:-1000000}
runs=${BENCH_RUNS:-3}
cpu=${BENCH_CPU:-$(($(nproc) - 1))}
tiny_packets=1000

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

mkdir -p "$out"
printf '*\n' >"$cache/.gitignore" # the cache folder ignores itself
rm -f "$out"/*
status=0

# ---- tools ----
have() { command -v "$1" >/dev/null 2>&1; }
peers_missing=0
for t in tshark argus ra tcptrace tcpdump taskset; do have "$t" || peers_missing=1; done
[[ -x /usr/bin/time ]] || peers_missing=1
if [[ $peers_missing -eq 1 && ${BENCH_NO_SETUP:-} != 1 && $(id -u) -eq 0 ]]; then
	log "installing the peers: hack/setup-bench.sh"
	bash "$repo/hack/setup-bench.sh" >&2 || log "setup-bench.sh could not install everything; missing peers are skipped"
fi
[[ -x /usr/bin/time ]] || die "GNU time (/usr/bin/time) is missing: run hack/setup-bench.sh as root"
have taskset || die "taskset is missing: run hack/setup-bench.sh as root"

cd "$repo"
log "building into $cache"
go build -o "$cache/gencap" ./hack/bench/gencap
go build -o "$cache/bareread" ./hack/bench/bareread
have_connscope=0
if go build -o "$cache/connscope" ./cmd/connscope 2>"$out/connscope-build.log"; then
	if "$cache/connscope" classify --help >/dev/null 2>&1; then
		have_connscope=1
	else
		log "connscope has no classify subcommand yet: its rows are skipped"
	fi
else
	log "connscope does not build yet (see $out/connscope-build.log): its rows are skipped"
fi

# ---- captures, cached by parameters and gencap's source ----
gen_hash=$(cat hack/bench/gencap/*.go | sha1sum | cut -c1-10)
key=n$packets-s$seed-l$linktype-$gen_hash
# captures of an older gencap can never be used again
find "$cache" -maxdepth 1 -name 'capture-*' ! -name "*-$gen_hash*" -delete
capfile=$cache/capture-$key.pcap
mixfile=$cache/capture-$key.mix.md
use_prefix=0
if [[ $prefix -gt 0 && $prefix -lt $packets ]]; then
	use_prefix=1
	headfile=$cache/capture-$key-head$prefix.pcap
fi
if [[ ! -s $capfile || ! -s $mixfile || ($use_prefix -eq 1 && ! -s $headfile) ]]; then
	log "generating $packets packets (seed $seed, link type $linktype)"
	args=(-n "$packets" -seed "$seed" -linktype "$linktype" -o "$capfile.tmp")
	[[ $use_prefix -eq 1 ]] && args+=(-head "$prefix" -head-out "$headfile.tmp")
	"$cache/gencap" "${args[@]}" | sed "s|$cache/|.cache/bench/|; s|\.tmp\>||g" >"$mixfile.tmp"
	mv "$capfile.tmp" "$capfile"
	[[ $use_prefix -eq 1 ]] && mv "$headfile.tmp" "$headfile"
	mv "$mixfile.tmp" "$mixfile"
else
	log "using cached $capfile"
fi
tinyfile=$cache/capture-n$tiny_packets-s$seed-l$linktype-$gen_hash.pcap
[[ -s $tinyfile ]] || "$cache/gencap" -n $tiny_packets -seed "$seed" -linktype "$linktype" -o "$tinyfile" >/dev/null
cat "$capfile" >/dev/null # warm the page cache
[[ $use_prefix -eq 1 ]] && cat "$headfile" >/dev/null
prefix_label=full
peer_file=$capfile
peer_packets=$packets
if [[ $use_prefix -eq 1 ]]; then
	prefix_label="first $prefix"
	peer_file=$headfile
	peer_packets=$prefix
fi

# ---- measuring ----
# measure ID TOOL INPUT PACKETS CMD...: runs CMD once, pinned to one core
# under GNU time, and keeps per ID the run with the least CPU time and the
# CPU time of every run. The fast rows are measured in rounds (every tool
# once per round, BENCH_RUNS rounds), so that a slow spell of the machine
# falls on all of them alike instead of on one row's runs. emit_rows then
# writes rows.tsv: id, tool, input, packets, wall s, CPU s, peak RSS KiB,
# note, median CPU s.
rows=$out/rows.tsv
order=()
measure() {
	local id=$1 tool=$2 input=$3 pkts=$4
	shift 4
	if [[ " ${order[*]} " != *" $id "* ]]; then
		order+=("$id")
		printf '%s\t%s\t%s\n' "$tool" "$input" "$pkts" >"$out/$id.meta"
	fi
	[[ -e $out/$id.failed ]] && return
	local rc=0 wall user sys rss cpus
	taskset -c "$cpu" /usr/bin/time -f '%e %U %S %M' -o "$out/$id.time" "$@" \
		>"$out/$id.stdout" 2>"$out/$id.stderr" || rc=$?
	if [[ $rc -ne 0 ]]; then
		log "$tool failed (exit $rc): see $out/$id.stderr"
		echo "failed: exit $rc, see .cache/bench/out/$id.stderr" >"$out/$id.failed"
		status=1
		return
	fi
	read -r wall user sys rss < <(tail -n 1 "$out/$id.time")
	cpus=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
	echo "$cpus" >>"$out/$id.all"
	if [[ ! -s $out/$id.best ]] || awk -v a="$cpus" -v b="$(cut -d' ' -f1 "$out/$id.best")" 'BEGIN { exit !(a < b) }'; then
		echo "$cpus $wall $rss" >"$out/$id.best"
		cp "$out/$id.stderr" "$out/$id.best.stderr"
	fi
	log "$tool ($input): wall $wall s, CPU $cpus s, peak RSS $((rss / 1024)) MiB"
}
skip() {
	order+=("$1")
	printf '%s\t%s\t%s\n' "$2" "$3" "$4" >"$out/$1.meta"
	echo "$5" >"$out/$1.skip"
}
emit_rows() {
	local id tool input pkts cpus wall rss note n med
	: >"$rows"
	for id in "${order[@]}"; do
		IFS=$'\t' read -r tool input pkts <"$out/$id.meta"
		if [[ -e $out/$id.failed || -e $out/$id.skip ]]; then
			printf '%s\t%s\t%s\t%s\t\t\t\t%s\n' "$id" "$tool" "$input" "$pkts" "$(cat "$out/$id.failed" "$out/$id.skip" 2>/dev/null)" >>"$rows"
			continue
		fi
		read -r cpus wall rss <"$out/$id.best"
		n=$(wc -l <"$out/$id.all")
		med=$(sort -g "$out/$id.all" | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
		note=""
		((n > 1)) && note="least of $n interleaved runs; CPU s $(sort -g "$out/$id.all" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }'), median $med"
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$tool" "$input" "$pkts" "$wall" "$cpus" "$rss" "$note" "$med" >>"$rows"
	done
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cs=("$cache/connscope" classify --format radar --stats)
for ((round = 0; round < runs; round++)); do
	measure cat "cat FILE > /dev/null" full "$packets" bash -c 'cat "$1" >/dev/null' _ "$capfile"
	measure bareread "bareread (Reader.NextFrame)" full "$packets" "$cache/bareread" "$capfile"
	measure decode "bareread -decode (Reader.Next)" full "$packets" "$cache/bareread" -decode "$capfile"
	if have tcpdump; then
		measure libpcap "tcpdump -nr FILE 'less 0' (libpcap's read)" full "$packets" tcpdump -nr "$capfile" 'less 0'
	fi
	if [[ $have_connscope -eq 1 ]]; then
		measure connscope "connscope classify --format radar --stats" full "$packets" "${cs[@]}" "$capfile"
		measure connscope_tiny "connscope classify (tiny file, RSS baseline)" "$tiny_packets packets" "$tiny_packets" "${cs[@]}" "$tinyfile"
		[[ $use_prefix -eq 1 ]] &&
			measure connscope_prefix "connscope classify --format radar --stats" "$prefix_label" "$prefix" "${cs[@]}" "$headfile"
	fi
done
have tcpdump || skip libpcap "tcpdump -nr FILE 'less 0' (libpcap's read)" full "$packets" "not installed (hack/setup-bench.sh)"
[[ $have_connscope -eq 1 ]] || skip connscope "connscope classify --format radar --stats" full "$packets" "not built yet"
if have tshark; then
	measure tshark "tshark -q -z conv,tcp" full "$packets" tshark -q -z conv,tcp -r "$capfile"
else
	skip tshark "tshark -q -z conv,tcp" full "$packets" "not installed (hack/setup-bench.sh)"
fi
if have argus && have ra; then
	measure argus "argus -r FILE -w X && ra -r X" "$prefix_label" "$peer_packets" \
		bash -c 'rm -f "$2" && argus -r "$1" -w "$2" && ra -r "$2"' _ "$peer_file" "$out/argus.out"
else
	skip argus "argus -r FILE -w X && ra -r X" "$prefix_label" "$peer_packets" "not installed (hack/setup-bench.sh)"
fi
if have tcptrace; then
	measure tcptrace "tcptrace -n" "$prefix_label" "$peer_packets" tcptrace -n "$peer_file"
else
	skip tcptrace "tcptrace -n" "$prefix_label" "$peer_packets" "not installed (hack/setup-bench.sh)"
fi
emit_rows
rm -f "$out/argus.out"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- connscope's --stats ----
stats_json=""
peak_open=""
peak_held=""
stats_packets=""
if [[ -s $out/connscope.best.stderr ]]; then
	stats_json=$(grep '^{' "$out/connscope.best.stderr" | tail -n 1 || true)
	peak_open=$(grep -o '"peak_open_connections"[[:space:]]*:[[:space:]]*[0-9]*' <<<"$stats_json" | grep -o '[0-9]*$' || true)
	peak_held=$(grep -o '"peak_held_connections"[[:space:]]*:[[:space:]]*[0-9]*' <<<"$stats_json" | grep -o '[0-9]*$' || true)
	stats_packets=$(grep -o '"packets"[[:space:]]*:[[:space:]]*[0-9]*' <<<"$stats_json" | grep -o '[0-9]*$' || true)
fi

# ---- the report ----
results=$cache/results.md
{
	echo "# connscope engine benchmark"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit," \
		"$(go version | cut -d' ' -f3), $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)," \
		"pinned to core $cpu of $(nproc); load average before $load_before, after $load_after."
	echo "Capture: $packets packets, seed $seed, link type $linktype ($(du -h "$capfile" | cut -f1)); argus and tcptrace read: $prefix_label."
	echo
	awk -F'\t' -v peak="$peak_open" -v held="$peak_held" '
	function pps(p, c) { return c > 0 ? p / c : 0 }
	function fmtn(x) { return x >= 1e6 ? sprintf("%.2f M", x / 1e6) : sprintf("%.0f k", x / 1e3) }
	{
		id[NR] = $1; tool[NR] = $2; input[NR] = $3; pk[NR] = $4; wall[NR] = $5; cpu[NR] = $6; rss[NR] = $7; note[NR] = $8; med[NR] = $9
		byid[$1] = NR
	}
	END {
		cs = byid["connscope"]; csp = byid["connscope_prefix"]; tiny = byid["connscope_tiny"]
		csok = cs && cpu[cs] != ""
		print "| tool | input | packets | wall s | CPU s | packets/s per core | peak RSS MiB | connscope vs this | note |"
		print "|---|---|---:|---:|---:|---:|---:|---|---|"
		for (i = 1; i <= NR; i++) {
			if (cpu[i] == "") {
				printf "| %s | %s | %d | | | | | | %s |\n", tool[i], input[i], pk[i], note[i]
				continue
			}
			r = pps(pk[i], cpu[i])
			rate = (r > 0 ? fmtn(r) : "n/a (< 0.01 s)")
			cmp = ""
			if (csok && (id[i] == "cat" || id[i] == "bareread" || id[i] == "decode" || id[i] == "libpcap") && cpu[i] > 0)
				cmp = sprintf("%.2f× its CPU time", cpu[cs] / cpu[i]) (id[i] == "bareread" ? " (target ≤ 3×)" : "")
			else if (id[i] == "connscope" || id[i] == "connscope_prefix")
				cmp = (id[i] == "connscope" ? "(target ≥ 5 M/s per core)" : "(reference for the prefix rows)")
			else if (id[i] != "connscope_tiny" && csok && r > 0) {
				ref = (input[i] == "full" || !csp) ? cs : csp
				if (cpu[ref] > 0) cmp = sprintf("%.1f× the packets/s", pps(pk[ref], cpu[ref]) / r)
				if (ref == cs && input[i] != "full") cmp = cmp " (connscope on the full file)"
			}
			printf "| %s | %s | %d | %.2f | %.2f | %s | %.0f | %s | %s |\n", tool[i], input[i], pk[i], wall[i], cpu[i], rate, rss[i] / 1024, cmp, note[i]
		}
		print ""
		print "## Targets"
		print ""
		if (!csok) { print "connscope classify did not run: no targets to check."; exit }
		r = pps(pk[cs], cpu[cs])
		printf "- packets/s per core ≥ 5 M: %s (%s)%s\n", fmtn(r), (r >= 5e6 ? "met" : "MISSED"), (med[cs] > 0 ? sprintf("; at the median run: %s", fmtn(pk[cs] / med[cs])) : "")
		b = byid["bareread"]
		if (b && cpu[b] > 0) printf "- within 3× of the bare read: %.2f× (%s)%s\n", cpu[cs] / cpu[b], (cpu[cs] / cpu[b] <= 3 ? "met" : "MISSED"), (med[b] > 0 && med[cs] > 0 ? sprintf("; of the medians of the interleaved runs: %.2f×", med[cs] / med[b]) : "")
		else print "- within 3× of the bare read: not measured (the bare read took < 0.01 s CPU: use more packets)"
		l = byid["libpcap"]
		if (l && cpu[l] > 0) printf "- within 3× of a libpcap bare read (the read loop every peer starts from): %.2f× (%s)%s\n", cpu[cs] / cpu[l], (cpu[cs] / cpu[l] <= 3 ? "met" : "MISSED"), (med[l] > 0 && med[cs] > 0 ? sprintf("; of the medians: %.2f×", med[cs] / med[l]) : "")
		behind = ""
		for (i = 1; i <= NR; i++) {
			if (id[i] != "tshark" && id[i] != "argus" && id[i] != "tcptrace") continue
			if (cpu[i] == "") continue
			ref = (input[i] == "full" || !csp) ? cs : csp
			if (pps(pk[ref], cpu[ref]) <= pps(pk[i], cpu[i])) behind = behind " " id[i]
		}
		printf "- ahead of every peer: %s\n", (behind == "" ? "met" : "MISSED, behind:" behind)
		if (peak > 0 && tiny && cpu[tiny] != "") {
			bpc = (rss[cs] - rss[tiny]) * 1024 / peak
			printf "- bytes per open connection < 200: (%.1f MiB - %.1f MiB) / %d peak open = %.0f B (%s)", rss[cs] / 1024, rss[tiny] / 1024, peak, bpc, (bpc < 200 ? "met" : "MISSED")
			if (held > peak) printf "; per connection held (open and finished ones remembered, peak %d): %.0f B", held, (rss[cs] - rss[tiny]) * 1024 / held
			print ""
		} else
			print "- bytes per open connection < 200: not measured (no peak_open_connections in --stats, or no tiny run)"
	}' "$rows"
	echo
	if [[ -n $stats_json ]]; then
		echo "connscope --stats on the capture: \`$stats_json\`"
		if [[ -n $stats_packets && $stats_packets != "$packets" ]]; then
			echo
			echo "**Note:** --stats counted $stats_packets packets, the capture holds $packets."
		fi
		echo
	fi
	echo "## The capture"
	echo
	cat "$mixfile"
	if [[ -s $out/connscope.stdout ]]; then
		echo
		echo "## connscope's radar output on the capture (first 40 lines)"
		echo
		echo '```'
		head -n 40 "$out/connscope.stdout"
		echo '```'
	fi
} >"$results"
cat "$results"
log "results in $results; each tool's output and stderr in $out"
exit $status
