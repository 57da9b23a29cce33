#!/usr/bin/env bash
# gen-manifests.sh runs controller-gen (sigs.k8s.io/controller-tools) over
# api/ and controllers/:
#   generate   api/v1alpha1/zz_generated.deepcopy.go
#   manifests  config/crd/bases (CRDs) and config/rbac/role.yaml (RBAC from
#              the +kubebuilder:rbac markers)
# controller-gen is installed into .cache/bin at CONTROLLER_GEN_VERSION
# if missing (a tool only: it is not a requirement of go.mod). Generated
# files are committed; CI checks that running this changes nothing.
#
# Usage: hack/gen-manifests.sh generate|manifests|all
#        hack/gen-manifests.sh --check   # regenerate all; fail if anything
#                                        # generated differs from git's copy
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

source hack/gotool-lib.sh

CONTROLLER_GEN_VERSION=${CONTROLLER_GEN_VERSION:-v0.23.0}
cgen=$(go_tool controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_GEN_VERSION")

what=${1:-all}
check=0
if [[ $what == --check ]]; then
	check=1
	what=all
fi
if [[ $what == generate || $what == all ]]; then
	"$cgen" object paths="./api/..."
fi
if [[ $what == manifests || $what == all ]]; then
	"$cgen" rbac:roleName=connscope-controller crd:allowDangerousTypes=false \
		paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=config/crd/bases \
		output:rbac:artifacts:config=config/rbac
fi

if [[ $check == 1 ]]; then
	generated=(api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml)
	if [[ -n "$(git status --porcelain -- "${generated[@]}")" ]]; then
		echo "gen-manifests: generated files are stale; run 'make manifests generate' and commit:" >&2
		git status --porcelain -- "${generated[@]}" >&2
		git diff --stat -- "${generated[@]}" >&2
		exit 1
	fi
	echo "gen-manifests: generated files are up to date" >&2
fi
