#!/usr/bin/env bash
# Installs helm (HELM_VERSION, default v3.22.0) into .cache/bin, built from
# the Go module proxy (about 1.5 minutes once; nothing is downloaded from
# anywhere else). Idempotent: an installed helm of that version is kept.
# Prints the path of the helm binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

HELM_VERSION=${HELM_VERSION:-v3.22.0}
bin="$PWD/.cache/bin"
helm="$bin/helm-$HELM_VERSION"
if [[ ! -x "$helm" ]]; then
	echo "setup-helm: building helm $HELM_VERSION into .cache/bin" >&2
	mkdir -p "$bin"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	GOFLAGS= GOBIN="$tmp" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
	mv "$tmp/helm" "$helm"
fi
ln -sfn "helm-$HELM_VERSION" "$bin/helm"
echo "$helm"
