#!/usr/bin/env bash
# envtest.sh: puts a kube-apiserver and an etcd into .cache/envtest/<version>
# for controller-runtime's envtest, and prints that folder (the value for
# KUBEBUILDER_ASSETS). Idempotent: a second run finds them and returns at once.
#
# setup-envtest's download site is not reachable from our machines, so:
# - kube-apiserver is built from the k8s.io/kubernetes module (Go module
#   proxy) in a throwaway module that pins every staging module to the
#   matching v0.Y.Z (Kubernetes' own go.mod names them v0.0.0 with replace
#   lines to ./staging, which a dependent module cannot see). About 4-5
#   minutes on 2 cores the first time; the binary is then cached.
# - etcd is Debian's etcd-server (3.4), installed with apt-get if missing.
#
# Usage: hack/envtest.sh            # prints the assets folder on stdout
#        K8S_VERSION=1.36.3 hack/envtest.sh
# Everything but the final path goes to stderr.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="${ENVTEST_ASSETS_DIR:-$root/.cache/envtest/k8s-$K8S_VERSION}"
GO="${GO:-go}"

log() { echo "envtest: $*" >&2; }

mkdir -p "$assets"

# etcd ----------------------------------------------------------------------
if [[ ! -x "$assets/etcd" ]]; then
	etcd_bin="$(command -v etcd || true)"
	if [[ -z "$etcd_bin" ]]; then
		log "installing Debian's etcd-server"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -q etcd-server >&2 || { apt-get update -q >&2 && apt-get install -y -q etcd-server >&2; }
		# The package starts a system etcd on :2379; envtest runs its own on
		# free ports, so the system one is stopped if the package started it.
		if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
			systemctl stop etcd >&2 || true
			systemctl disable etcd >&2 || true
		fi
		etcd_bin="$(command -v etcd)"
	fi
	ln -sf "$etcd_bin" "$assets/etcd"
fi

# kube-apiserver ------------------------------------------------------------
if [[ ! -x "$assets/kube-apiserver" ]]; then
	staging_version="0.${K8S_VERSION#1.}"
	build="$root/.cache/envtest/build-$K8S_VERSION"
	mkdir -p "$build"
	log "building kube-apiserver v$K8S_VERSION from k8s.io/kubernetes (a few minutes, once) in $build"
	staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
		cloud-provider cluster-bootstrap code-generator component-base component-helpers
		controller-manager cri-api cri-client cri-streaming csi-translation-lib
		dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
		kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
		mount-utils pod-security-admission sample-apiserver sample-cli-plugin
		sample-controller)
	{
		echo "module connscope.local/envtest-build"
		echo
		echo "go 1.26"
		echo
		echo "require k8s.io/kubernetes v$K8S_VERSION"
		echo
		for m in "${staging[@]}"; do
			echo "replace k8s.io/$m => k8s.io/$m v$staging_version"
		done
	} >"$build/go.mod"
	cat >"$build/tools.go" <<'GO'
//go:build tools

// Package tools pins the kube-apiserver command for this throwaway module.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
	(
		cd "$build"
		export GOFLAGS=-mod=mod GOWORK=off
		"$GO" mod tidy >&2
		v=k8s.io/component-base/version
		minor="${K8S_VERSION#1.}"; minor="${minor%%.*}"
		CGO_ENABLED=0 "$GO" build -trimpath \
			-ldflags "-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
			-o "$assets/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
	)
	mv "$assets/kube-apiserver.tmp" "$assets/kube-apiserver"
fi

log "assets ready in $assets"
echo "$assets"
