#!/usr/bin/env bash
# gen-chart.sh writes charts/connscope's generated files (hack/gen-chart):
# files/crds (copies of config/crd/bases), files/rbac (copies of
# config/rbac's roles) and README.md (the values table from values.yaml's
# comments). Never edit those by hand.
#
# Usage: hack/gen-chart.sh           # write them
#        hack/gen-chart.sh --check   # fail if any is stale (make verify-generated)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
exec go run ./hack/gen-chart "$@"
