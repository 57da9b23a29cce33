#!/usr/bin/env bash
# pgo.sh writes cmd/connscope/default.pgo, the CPU profile that `go build`
# uses for profile-guided optimisation of connscope (Go builds a main
# package with the default.pgo beside it; -pgo=off builds without). The
# profile is what `connscope classify --cpu-profile` records while
# classifying synthetic captures of hack/bench/gencap: the flow engine,
# which the classifier service runs too, is where connscope spends its CPU.
# The captures use a seed other than the benchmark's (make bench-engine
# reads seed 1), both link types gencap writes, and two output formats.
#
# Run it (`make pgo`) after a change to the engine's hot path, and commit
# the profile with the change. Only the builds' speed depends on it: a
# stale or missing profile builds the same program.
#
# Environment:
#   PGO_PACKETS  packets in each capture (default 5000000)
#   PGO_ROUNDS   runs of each capture and format (default 2)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$repo/.cache/pgo
packets=${PGO_PACKETS:-5000000}
rounds=${PGO_ROUNDS:-2}
log() { echo "pgo: $*" >&2; }

mkdir -p "$cache"
printf '*\n' >"$cache/.gitignore" # the cache folder ignores itself
cd "$repo"
go build -o "$cache/gencap" ./hack/bench/gencap
go build -o "$cache/connscope" ./cmd/connscope
rm -f "$cache"/*.pprof
gen_hash=$(cat hack/bench/gencap/*.go | sha1sum | cut -c1-10)
find "$cache" -maxdepth 1 -name 'capture-*' ! -name "*-$gen_hash*" -delete # an older gencap's
for lt in 101 1; do
	cap=$cache/capture-n$packets-s2-l$lt-$gen_hash.pcap
	if [[ ! -s $cap ]]; then
		log "generating $packets packets, link type $lt"
		"$cache/gencap" -n "$packets" -seed 2 -linktype "$lt" -o "$cap.tmp" >/dev/null
		mv "$cap.tmp" "$cap"
	fi
	for r in $(seq "$rounds"); do
		for format in radar json; do
			"$cache/connscope" classify --format "$format" --cpu-profile "$cache/l$lt-$format-$r.pprof" "$cap" >/dev/null
		done
	done
done
go tool pprof -proto "$cache"/*.pprof >"$cache/default.pgo" 2>/dev/null
mv "$cache/default.pgo" cmd/connscope/default.pgo
log "wrote cmd/connscope/default.pgo ($(wc -c <cmd/connscope/default.pgo) bytes) from $(ls "$cache"/*.pprof | wc -l) profiles"
