#!/usr/bin/env bash
# setup-scenarios.sh installs the tools the traffic scenario tests
# (classifier/scenarios) drive: namespaces and netfilter (iproute2, iptables,
# conntrack), captures (tcpdump, tshark), traffic (curl, openssl, python3 with
# scapy, hping3) and scanners (zmap, nmap, masscan); and what the systemd
# unit's tests (config/systemd) use: systemd-analyze, systemd-nspawn.
#
# Idempotent: it asks apt only about packages that are missing, and runs
# `apt-get update` only then. Needs root on Debian 12.
set -euo pipefail

packages=(iproute2 iptables conntrack tcpdump tshark hping3 zmap nmap masscan systemd systemd-container
	python3 python3-scapy curl ethtool openssl)

if [ "$(id -u)" -ne 0 ]; then
	echo "setup-scenarios.sh: needs root (apt-get install); run it with sudo" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	# dpkg-query prints "install ok installed" for a package that is fully installed.
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "setup-scenarios.sh: all scenario tools present"
	exit 0
fi

echo "setup-scenarios.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer it up front so the
# install never waits for a terminal.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
