#!/usr/bin/env bash
# setup-bench.sh installs the tools that hack/bench/run.sh compares connscope
# with, from Debian 12's packages. Run it as root; it is idempotent: a tool
# already on the machine is left alone, and `apt-get update` runs only when
# something is missing and the package lists do not know the package yet.
#
#   tshark         tshark -z conv,tcp (Wireshark's dissector; the common peer)
#   argus-server   argus: reads a capture, writes flow records
#   argus-client   ra: prints argus flow records
#   tcptrace       tcptrace -n: per-connection analysis of a capture
#   time           GNU time (/usr/bin/time): CPU seconds and peak RSS
#   util-linux     taskset: pins each run to one core
#
# Every package above exists in Debian 12 (bookworm); a package that is not
# offered by the configured sources is reported and skipped, and the script
# then exits 1 so that the bench knows its table will lack that peer.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# package:command pairs; the command proves the package is installed.
wanted=(
	"tshark:tshark"
	"argus-server:argus"
	"argus-client:ra"
	"tcptrace:tcptrace"
	"time:/usr/bin/time"
	"util-linux:taskset"
)

if [[ $(id -u) -ne 0 ]]; then
	echo "setup-bench: run as root (apt-get install needs it)" >&2
	exit 1
fi

have() { [[ $1 == /* ]] && [[ -x $1 ]] || command -v "$1" >/dev/null 2>&1; }

missing=()
for pair in "${wanted[@]}"; do
	pkg=${pair%%:*} cmd=${pair#*:}
	if have "$cmd"; then
		echo "setup-bench: $pkg: present ($cmd)"
	else
		missing+=("$pkg")
	fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
	echo "setup-bench: all peers present"
	exit 0
fi

# candidate PKG prints the version apt would install, or nothing.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)' || true; }

need_update=0
for pkg in "${missing[@]}"; do
	[[ -n $(candidate "$pkg") ]] || need_update=1
done
if [[ $need_update -eq 1 ]]; then
	echo "setup-bench: apt-get update"
	apt-get -o DPkg::Lock::Timeout=600 update -qq
fi

install=() unavailable=()
for pkg in "${missing[@]}"; do
	if [[ -n $(candidate "$pkg") ]]; then
		install+=("$pkg")
	else
		unavailable+=("$pkg")
	fi
done
if [[ ${#install[@]} -gt 0 ]]; then
	echo "setup-bench: apt-get install ${install[*]}"
	# Other sessions may hold the dpkg lock: wait for it rather than fail.
	# wireshark-common asks whether non-root users may capture; the default
	# (no) is what a benchmark machine wants.
	apt-get install -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends "${install[@]}" >/dev/null
fi
for pkg in "${unavailable[@]}"; do
	echo "setup-bench: $pkg: NOT AVAILABLE in this machine's Debian sources; its column will be missing" >&2
done
[[ ${#unavailable[@]} -eq 0 ]]
