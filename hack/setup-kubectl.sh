#!/usr/bin/env bash
# Installs kubectl (KUBECTL_VERSION, default 1.36.3, the envtest
# kube-apiserver's version) into .cache/bin for the chart tests, built from
# the k8s.io/kubectl module on the Go module proxy in a throwaway module
# (about a minute once; nothing downloaded from anywhere else). Idempotent.
# Prints the path of the kubectl binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

KUBECTL_VERSION=${KUBECTL_VERSION:-1.36.3}
bin="$PWD/.cache/bin"
kubectl="$bin/kubectl-v$KUBECTL_VERSION"
if [[ ! -x "$kubectl" ]]; then
	echo "setup-kubectl: building kubectl v$KUBECTL_VERSION into .cache/bin" >&2
	mkdir -p "$bin"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	cat >"$tmp/go.mod" <<GOMOD
module connscope.local/kubectl-build

go 1.26

require k8s.io/kubectl v0.${KUBECTL_VERSION#1.}
GOMOD
	cat >"$tmp/main.go" <<'GO'
// Command kubectl is k8s.io/kubectl's command, as cmd/kubectl builds it.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
GO
	(
		cd "$tmp"
		export GOFLAGS=-mod=mod GOWORK=off
		go mod tidy >&2
		v=k8s.io/component-base/version
		minor="${KUBECTL_VERSION#1.}"; minor="${minor%%.*}"
		CGO_ENABLED=0 go build -trimpath \
			-ldflags "-s -w -X $v.gitVersion=v$KUBECTL_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor" \
			-o "$kubectl.tmp" . >&2
	)
	mv "$kubectl.tmp" "$kubectl"
fi
ln -sfn "kubectl-v$KUBECTL_VERSION" "$bin/kubectl"
echo "$kubectl"
