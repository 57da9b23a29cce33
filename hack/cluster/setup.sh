#!/usr/bin/env bash
# setup.sh installs what hack/cluster/up.sh runs, besides the Kubernetes
# binaries (hack/k8s-binaries.sh) and the images (hack/images.sh):
#
#   - Debian packages: containerd (1.6), iptables, conntrack, socat,
#     iproute2, util-linux (nsenter), openssl, and libseccomp-dev and
#     pkg-config for building runc;
#   - runc v1.5.2 built with the seccomp tag (Debian's 1.1.5 cannot start
#     CRI sandboxes on these machines) into .cache/cluster/bin;
#   - the CNI plugins bridge, host-local, loopback and portmap from
#     github.com/containernetworking/plugins into .cache/cluster/cni;
#   - CoreDNS with only the plugins a test cluster's DNS uses (kubernetes,
#     cache, errors, health, ready, log, loadbalance), built from the
#     github.com/coredns/coredns module in a throwaway module, into
#     .cache/cluster/bin.
#
# Idempotent: apt is asked only about missing packages, and a binary that is
# there is not built again. Needs root on Debian 12. Containerd's package
# ships only a systemd unit; on a machine that runs systemd the unit is
# stopped and disabled if the install started it, since up.sh runs its own
# containerd.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
GO="${GO:-go}"
bin="$root/.cache/cluster/bin"
cni="$root/.cache/cluster/cni"
RUNC_VERSION=v1.5.2
CNI_VERSION=v1.9.1
COREDNS_VERSION=v1.14.7

log() { echo "cluster/setup: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "needs root (apt-get install); run it with sudo"
	exit 1
fi

packages=(containerd iptables conntrack socat iproute2 util-linux openssl curl bind9-dnsutils libseccomp-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} > 0)); then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		{ apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
	if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
		systemctl stop containerd >&2 || true
		systemctl disable containerd >&2 || true
	fi
fi

mkdir -p "$bin" "$cni"
export GOFLAGS=-mod=mod GOWORK=off

if [[ ! -x "$bin/runc" ]]; then
	log "building runc $RUNC_VERSION (seccomp)"
	GOBIN="$bin" CGO_ENABLED=1 "$GO" install -tags seccomp "github.com/opencontainers/runc@$RUNC_VERSION" >&2
fi

plugins=()
for p in main/bridge ipam/host-local main/loopback meta/portmap; do
	[[ -x "$cni/${p#*/}" ]] || plugins+=("github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION")
done
if ((${#plugins[@]} > 0)); then
	log "building the CNI plugins $CNI_VERSION"
	GOBIN="$cni" CGO_ENABLED=0 "$GO" install "${plugins[@]}" >&2
fi

if [[ ! -x "$bin/coredns" ]]; then
	build="$root/.cache/cluster/build-coredns"
	log "building CoreDNS $COREDNS_VERSION (a few plugins only) in $build"
	mkdir -p "$build"
	cat >"$build/go.mod" <<EOF
module connscope.local/coredns-build

go 1.26

require github.com/coredns/coredns $COREDNS_VERSION
EOF
	# The plugins register themselves when imported; Directives is their
	# order in the chain, as in CoreDNS's plugin.cfg.
	cat >"$build/main.go" <<'GO'
// Command coredns is CoreDNS with the plugins a test cluster's DNS needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
	(
		cd "$build"
		"$GO" mod tidy >&2
		CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$bin/coredns.tmp" . >&2
	)
	mv "$bin/coredns.tmp" "$bin/coredns"
fi

log "node tools ready in $bin and $cni"
