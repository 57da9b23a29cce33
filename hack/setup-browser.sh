#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's headless browser test
# (classifier/dashboard, `make dashboard-test`). Idempotent: does nothing
# when /usr/bin/chromium is already there. Needs root (or sudo) and apt.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
	echo "setup-browser: $(chromium --version 2>/dev/null || echo chromium) already installed"
	exit 0
fi

source "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
apt_install setup-browser chromium fonts-dejavu-core
echo "setup-browser: $(chromium --version 2>/dev/null) installed"
