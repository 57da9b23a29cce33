#!/usr/bin/env bash
# k8s-binaries.sh: puts the binaries of a Kubernetes node into the envtest
# assets folder (.cache/envtest/k8s-<version>) and prints that folder:
# kube-apiserver and etcd (through hack/envtest.sh, unchanged), then
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl.
# Idempotent: what is there is not built again.
#
# No release download site is reachable from our machines, so the binaries
# are built from the k8s.io/kubernetes module (Go module proxy) with
# envtest.sh's throwaway module (.cache/envtest/build-<version>: every
# staging module pinned to v0.Y.Z), copied into build-node-<version> with a
# tools file naming the other commands, tidied, and built in one `go build`
# (packages shared with kube-apiserver come from the build cache). About
# 5-8 minutes on 2 cores after kube-apiserver's build, once.
#
# Usage: hack/k8s-binaries.sh        # prints the assets folder on stdout
#        K8S_VERSION=1.36.3 hack/k8s-binaries.sh
# Everything but the final path goes to stderr.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.3}"
export K8S_VERSION
root="$(cd "$(dirname "$0")/.." && pwd)"
GO="${GO:-go}"

log() { echo "k8s-binaries: $*" >&2; }

assets="$(bash "$root/hack/envtest.sh")"
build="$root/.cache/envtest/build-node-$K8S_VERSION"

cmds=(kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
missing=()
for c in "${cmds[@]}"; do
	[[ -x "$assets/$c" ]] || missing+=("$c")
done
if ((${#missing[@]} > 0)); then
	mod="$root/.cache/envtest/build-$K8S_VERSION/go.mod"
	[[ -f "$mod" ]] || { log "envtest.sh left no module in ${mod%/go.mod}"; exit 1; }
	mkdir -p "$build"
	sed 's#^module .*#module connscope.local/k8s-node-build#' "$mod" >"$build/go.mod"
	cp "${mod%.mod}.sum" "$build/go.sum" 2>/dev/null || true
	log "building ${missing[*]} v$K8S_VERSION from k8s.io/kubernetes (several minutes, once) in $build"
	{
		echo "//go:build tools"
		echo
		echo "// Package tools pins the node's commands for this throwaway module."
		echo "package tools"
		echo
		echo "import ("
		for c in "${cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
		echo ")"
	} >"$build/tools.go"
	tmp="$assets/.build-node"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	(
		cd "$build"
		export GOFLAGS=-mod=mod GOWORK=off
		"$GO" mod tidy >&2
		v=k8s.io/component-base/version
		minor="${K8S_VERSION#1.}"
		minor="${minor%%.*}"
		pkgs=()
		for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
		CGO_ENABLED=0 "$GO" build -trimpath \
			-ldflags "-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
			-o "$tmp/" "${pkgs[@]}" >&2
	)
	for c in "${missing[@]}"; do mv "$tmp/$c" "$assets/$c"; done
	rm -rf "$tmp"
fi

log "node binaries ready in $assets"
echo "$assets"
