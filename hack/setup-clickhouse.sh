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

source "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
apt_install setup-clickhouse RUNLEVEL=1 clickhouse-server clickhouse-client
echo "setup-clickhouse: clickhouse-server $(dpkg-query -W -f='${Version}' clickhouse-server) installed"
