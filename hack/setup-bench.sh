#!/usr/bin/env bash
# setup-bench.sh installs the tools that the benchmarks under hack/bench/
# compare connscope with or drive, from Debian 12's packages. Run it as
# root; it is idempotent: a tool already on the machine is left alone, and
# `apt-get update` runs only when something is missing and the package
# lists do not know the package yet.
#
# The engine benchmark (run.sh):
#   tshark         tshark -z conv,tcp (Wireshark's dissector; the common peer)
#   argus-server   argus: reads a capture, writes flow records
#   argus-client   ra: prints argus flow records
#   tcptrace       tcptrace -n: per-connection analysis of a capture
#   tcpdump        tcpdump -r: libpcap's bare read, a second floor
#   time           GNU time (/usr/bin/time): CPU seconds and peak RSS
#   util-linux     taskset: pins each run to one core; nsenter
# The agent benchmarks (agent-capture.sh, agent-datapath.sh,
# agent-datapath-toggle.sh):
#   ulogd2         the NFLOG reader the agent is compared with
#   ulogd2-pcap    ulogd2's pcap output plugin (NFLOG to a pcap file)
#   tshark         tshark -i nflog:G (dumpcap reads the group)
#   iperf3         TCP throughput through the rules
#   wrk            HTTP new-connection rate through the rules
#   hping3         for checking by hand (hping3 --flood cannot be paced, so
#                  the benchmark sends with its own hack/bench/synflood)
#   iproute2, iptables, ethtool   namespaces, veths, rules, offloads off
#   nftables       nft: whether a mangle PREROUTING hook exists
#                  (agent-datapath-toggle.sh; iptables-nft shows built-in
#                  chains whether or not they exist)
#   curl, python3  the agent's /metrics and /readyz; iperf3's JSON
#
# Packages with a daemon (ulogd2) are installed without starting it: a
# policy-rc.d that refuses is put in place for the install when the machine
# has none, and removed again.
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
	"tcpdump:tcpdump"
	"time:/usr/bin/time"
	"util-linux:taskset"
	"util-linux:nsenter"
	"ulogd2:ulogd"
	"ulogd2-pcap:/usr/lib/*/ulogd/ulogd_output_PCAP.so"
	"hping3:hping3"
	"iperf3:iperf3"
	"wrk:wrk"
	"iproute2:ip"
	"iproute2:ss"
	"curl:curl"
	"python3:python3"
	"iptables:iptables-nft"
	"iptables:iptables-legacy"
	"ethtool:ethtool"
	"nftables:nft"
	"jq:jq"
)

if [[ $(id -u) -ne 0 ]]; then
	echo "setup-bench: run as root (apt-get install needs it)" >&2
	exit 1
fi

# have CMD: CMD is in PATH, or (an absolute path, globs allowed) exists.
have() { [[ $1 == /* ]] && compgen -G "$1" >/dev/null || command -v "$1" >/dev/null 2>&1; }

missing=()
for pair in "${wanted[@]}"; do
	pkg=${pair%%:*} cmd=${pair#*:}
	if have "$cmd"; then
		echo "setup-bench: $pkg: present ($cmd)"
	elif [[ " ${missing[*]} " != *" $pkg "* ]]; then
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
	# (no) is what a benchmark machine wants. No daemon starts (ulogd2
	# would bind NFLOG groups in the machine's own namespace).
	echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
	made_policy=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\n# setup-bench.sh: no daemon starts during this install\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get install -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends "${install[@]}" >/dev/null
	if [[ $made_policy -eq 1 ]]; then
		rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
fi
for pkg in "${unavailable[@]}"; do
	echo "setup-bench: $pkg: NOT AVAILABLE in this machine's Debian sources; its column will be missing" >&2
done
[[ ${#unavailable[@]} -eq 0 ]]
