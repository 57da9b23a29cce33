#!/usr/bin/env bash
# ingest.sh: the classifier's ingest benchmark (make bench-ingest; part of
# make bench). Needs root (network namespaces).
#
# 1. Records ingested per core: `connscope classifier` (GOMAXPROCS=1,
#    pinned by taskset to CPU $CLASSIFIER_CPU) in a namespace of its own,
#    its store (SQLite and the journal) in the work folder under /tmp (checked to be a disk,
#    not tmpfs: the journal's fsync is real), agents' gRPC sinks (hack/bench/ingestload: the
#    agent's own ship package, one batch in flight per stream, 1024
#    records a batch, each acknowledged only once journaled) pinned to the
#    other CPU, 1 and then 8 streams. Measured over DURATION seconds after a
#    warm-up: records acknowledged per CPU-second of the classifier process
#    (user + system time from /proc/PID/stat: the per-core figure, robust to
#    other load on the machine) and per second of wall time. TRIALS runs
#    each, a fresh database each run.
# 2. Time from an RST reaching the node to the API showing it: the real
#    `connscope agent` (probability 1, port 8080) and the classifier
#    (default idle timeout, grace and tick) in a server namespace, a client
#    namespace connecting and aborting (SO_LINGER 0: SYN, ACK, RST+ACK),
#    RST_TRIALS times; median and p95 from the abort to
#    /api/v1/signatures/summary counting it.
#
# Results: .cache/bench/ingest-results.md (and the JSON lines of each run
# in .cache/bench/agent-out/ingest/). Targets (issue 5): at least 1 M
# records/s per core; RST to API under 5 s.
source "$(dirname "$0")/agent-lib.sh"
BENCH_POLICIES+=(bench-ingest)

TRIALS=${TRIALS:-3}
DURATION=${DURATION:-10}
RST_TRIALS=${RST_TRIALS:-15}
CLASSIFIER_CPU=${CLASSIFIER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

bench_init ingest
need_tools ip nsenter taskset ethtool iptables curl jq
[[ $(stat -f -c %T "$WORK") != tmpfs ]] || die "$WORK is on tmpfs: the journal's fsync would cost nothing; set TMPDIR to a folder on a disk"
log "building connscope and ingestload into $CACHE"
(
	cd "$REPO"
	go build -o "$CACHE/connscope" ./cmd/connscope
	go build -o "$CACHE/ingestload" ./hack/bench/ingestload
	go build -o "$CACHE/tinyhttp" ./hack/bench/tinyhttp
)
BIN=$CACHE/connscope
LOAD=$CACHE/ingestload
TOKEN=$WORK/token
head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$TOKEN"
chmod 600 "$TOKEN"
DBROOT=$WORK/db # removed by bench_cleanup

ready() { in_ns "$1" curl -fsS -o /dev/null "$2/readyz"; }

# throughput STREAMS TRIAL: one run; appends its JSON line to $LOGS/load.jsonl
throughput() {
	local streams=$1 trial=$2 db
	ns_pair
	db=$DBROOT/run-$streams-$trial
	mkdir -p "$db"
	start_bg "classifier-$streams-$trial" "$SRV" "$CLASSIFIER_CPU" env GOMAXPROCS=1 "$BIN" classifier \
		--grpc-addr 127.0.0.1:9443 --http-addr 127.0.0.1:8081 --store "sqlite://$db/connscope.db" \
		--ingest-token-file "$TOKEN" --log-json
	local cls=$BG_PID
	wait_for 30 ready "$SRV" http://127.0.0.1:8081 || die "the classifier did not become ready: $(tail -n 5 "$LOGS/classifier-$streams-$trial.log")"
	in_ns "$SRV" taskset -c "$LOAD_CPU" "$LOAD" load -target 127.0.0.1:9443 -token-file "$TOKEN" \
		-streams "$streams" -duration "${DURATION}s" -pid "$cls" | tee -a "$LOGS/load.jsonl" >&2
	stop_bg "$cls" TERM 30
	ns_drop
	rm -rf "$db"
}

log "machine: $(kernel_info); load average $(cut -d' ' -f1-3 /proc/loadavg)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$LOGS/load.jsonl"
for streams in 1 8; do
	for ((trial = 1; trial <= TRIALS; trial++)); do
		log "ingest: $streams stream(s), run $trial of $TRIALS"
		throughput "$streams" "$trial"
	done
done

# The RST to API time.
log "RST to API: $RST_TRIALS resets through the real agent"
ns_pair
mkdir -p "$DBROOT/rst"
start_bg classifier-rst "$SRV" "" "$BIN" classifier --grpc-addr 127.0.0.1:9443 --http-addr "$SRV_IP:8081" \
	--store "sqlite://$DBROOT/rst/connscope.db" --ingest-token-file "$TOKEN" --log-json
wait_for 30 ready "$SRV" "http://$SRV_IP:8081" || die "the classifier did not become ready"
start_bg tinyhttp "$SRV" "" "$CACHE/tinyhttp" -addr "$SRV_IP:8080"
start_bg agent-rst "$SRV" "" "$BIN" agent --policy bench-ingest --probability 1 --label-bit 30 --nflog-group 1030 \
	--ports 8080 --interfaces "$SRV_DEV" --sink grpc://127.0.0.1:9443 --sink-token-file "$TOKEN" \
	--node-name bench --metrics-addr= --log-json
agent_ready() { grep -q '"rules installed"' "$LOGS/agent-rst.log"; }
wait_for 30 agent_ready || die "the agent did not install its rules: $(tail -n 5 "$LOGS/agent-rst.log")"
RST_JSON=$(in_ns "$CLI" "$LOAD" rst -server "$SRV_IP:8080" -api "http://$SRV_IP:8081" -trials "$RST_TRIALS")
echo "$RST_JSON" >"$LOGS/rst.json"
ns_drop

# The report.
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
range() { # range STREAMS FIELD: min–max over the runs
	jq -s -r --argjson s "$1" --arg f "$2" \
		'[.[] | select(.streams == $s) | .[$f]] | "\(min | . / 1000 | floor) k – \(max | . / 1000 | floor) k"' "$LOGS/load.jsonl"
}
{
	echo "## Classifier ingest ($(date -u +%Y-%m-%dT%H:%MZ))"
	echo
	echo "$(kernel_info); load average $LOAD_BEFORE before, $LOAD_AFTER after (2 cores shared with other work: the CPU-second figures are the comparable ones)."
	echo "The classifier: GOMAXPROCS=1, pinned to CPU $CLASSIFIER_CPU, its store (SQLite and the journal) on $(df --output=source "$WORK" | tail -n 1) ($(stat -f -c %T "$WORK")); agents' sinks (ingestload, agent/ship) on CPU $LOAD_CPU, 1024 records a batch, one batch in flight per stream; $DURATION s measured per run, $TRIALS runs."
	echo
	echo "| streams | records per classifier CPU-second (per core) | records/s wall, one core | target |"
	echo "|---:|---:|---:|---|"
	for s in 1 8; do
		echo "| $s | $(range "$s" records_per_cpu_second) | $(range "$s" records_per_second) | ≥ 1 M/s per core |"
	done
	echo
	echo "RST to API ($RST_TRIALS resets through the real agent, the classifier's $(
		"$BIN" classifier --help | grep -o 'idle-timeout duration.*(default [^)]*)' | grep -o 'default [^)]*'
	) idle timeout): median $(jq -r '.median_seconds * 100 | round / 100' <<<"$RST_JSON") s, p95 $(jq -r '.p95_seconds * 100 | round / 100' <<<"$RST_JSON") s (target: under 5 s)."
	echo
	echo "Runs (JSON): $LOGS/load.jsonl, $LOGS/rst.json"
} >"$CACHE/ingest-results.md"
cat "$CACHE/ingest-results.md"
