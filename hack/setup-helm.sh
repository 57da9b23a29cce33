#!/usr/bin/env bash
# Installs helm (HELM_VERSION, default v3.22.0) into .cache/bin, built from
# the Go module proxy (about 1.5 minutes once; nothing is downloaded from
# anywhere else). Idempotent: an installed helm of that version is kept.
# Prints the path of the helm binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

source hack/gotool-lib.sh

HELM_VERSION=${HELM_VERSION:-v3.22.0}
helm=$(go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION")
ln -sfn "helm-$HELM_VERSION" .cache/bin/helm
echo "$helm"
