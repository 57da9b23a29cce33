#!/usr/bin/env bash
# Installs Debian's ClickHouse server and client (18.16 on Debian 12) for
# the ClickHouse tests and benchmark (classifier/chstore, agent/ship's
# clickhouse sink, hack/bench/clickhouse.sh). Idempotent: does nothing when
# clickhouse-server is already there. Needs root (or sudo) and apt.
#
# The tests never use the system service: each starts its own server
# process on loopback with its own configuration, data folder in a
# temporary folder and free ports, and stops it by PID (internal/chtest).
# RUNLEVEL=1 keeps the package's scripts from starting the service.
set -euo pipefail

if command -v clickhouse-server >/dev/null 2>&1; then
	echo "setup-clickhouse: clickhouse-server already installed ($(dpkg-query -W -f='${Version}' clickhouse-server 2>/dev/null || echo unknown version))"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "setup-clickhouse: need root or sudo to apt-get install clickhouse-server" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends clickhouse-server clickhouse-client >/dev/null
echo "setup-clickhouse: clickhouse-server $(dpkg-query -W -f='${Version}' clickhouse-server) installed"
