#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's headless browser test
# (classifier/dashboard, `make dashboard-test`). Idempotent: does nothing
# when /usr/bin/chromium is already there. Needs root (or sudo) and apt.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
	echo "setup-browser: $(chromium --version 2>/dev/null || echo chromium) already installed"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "setup-browser: need root or sudo to apt-get install chromium" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "setup-browser: $(chromium --version 2>/dev/null) installed"
