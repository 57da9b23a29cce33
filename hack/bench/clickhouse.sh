#!/usr/bin/env bash
# clickhouse.sh is the ClickHouse benchmark (`make bench`, `make
# bench-clickhouse`): rows inserted per second per agent core by the agents'
# clickhouse sink (peer: clickhouse-client inserting the same rows), and
# connections classified per second from ClickHouse with 1 and 2 classifier
# replicas (peer: the offline engine on the capture file). See
# hack/bench/chbench for what is measured and how.
#
# It installs clickhouse-server if needed (hack/setup-clickhouse.sh), builds
# gencap and chbench into .cache/bench, generates a capture, and runs
# chbench, which starts its own ClickHouse server on loopback (never the
# system service) and stops it by PID. The table goes to stdout and to
# .cache/bench/clickhouse-results.md.
#
# Environment:
#   BENCH_CH_PACKETS  packets in the capture (default 1000000)
#   BENCH_CH_RATE     connection arrivals per second of capture time (default 2000)
#   BENCH_CH_WINDOW   window length (default 1m)
#   BENCH_CH_PARTS    parts per window (default 8)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=$repo/.cache/bench
packets=${BENCH_CH_PACKETS:-1000000}
rate=${BENCH_CH_RATE:-2000}
window=${BENCH_CH_WINDOW:-1m}
parts=${BENCH_CH_PARTS:-8}

mkdir -p "$cache"
bash "$repo/hack/setup-clickhouse.sh" >&2
cd "$repo"
go build -o "$cache/gencap" ./hack/bench/gencap
go build -o "$cache/chbench" ./hack/bench/chbench
capfile=$cache/clickhouse-$packets-$rate.pcap
if [ ! -s "$capfile" ]; then
	"$cache/gencap" -n "$packets" -rate "$rate" -nano -o "$capfile.tmp" >&2
	mv "$capfile.tmp" "$capfile"
fi
"$cache/chbench" -capture "$capfile" -window "$window" -parts "$parts" | tee "$cache/clickhouse-results.md"
