#!/usr/bin/env bash
# demo-captures.sh (make demo-captures): classifies the bundled captures of
# real traffic (made by the scenario tests in network namespaces: normal
# clients, aborting clients, scanners, middlebox drops and injected resets)
# and prints the Radar-style summary, then the table a person reads first.
# Needs neither root nor namespaces; `make demo` runs the live version.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CONNSCOPE:-bin/connscope}
shopt -s nullglob
files=(classifier/scenarios/testdata/*.pcap classifier/scenarios/testdata/*.pcapng)
if [ ${#files[@]} -eq 0 ]; then
	echo "demo: no bundled captures in classifier/scenarios/testdata" >&2
	exit 1
fi
echo "== connscope classify --format radar (${#files[@]} captures of the server's ingress)"
"$bin" classify --format radar "${files[@]}"
echo
echo "== connscope classify (table)"
"$bin" classify "${files[@]}"
