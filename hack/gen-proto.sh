#!/usr/bin/env bash
# gen-proto.sh regenerates the Go code of the agent -> classifier protocol
# (packet/ingestpb/ingest.proto) with protoc, protoc-gen-go and
# protoc-gen-go-grpc. The generated files are committed; run this after
# changing the .proto (`make generate-proto`).
#
# Tools, installed idempotently (only what is missing or at another version):
#   protoc              Debian's protobuf-compiler (apt-get, as root or
#                       through sudo; hack/apt-lib.sh)
#   protoc-gen-go       google.golang.org/protobuf/cmd/protoc-gen-go, the
#                       version go.mod requires, into .cache/bin
#   protoc-gen-go-grpc  google.golang.org/grpc/cmd/protoc-gen-go-grpc at
#                       $PROTOC_GEN_GO_GRPC_VERSION, into .cache/bin
#
# With --check it regenerates into a temporary folder and fails if the
# committed files differ (for CI).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

PROTOC_GEN_GO_GRPC_VERSION=${PROTOC_GEN_GO_GRPC_VERSION:-v1.6.2}
# protoc-gen-go must match the runtime the module builds with.
PROTOC_GEN_GO_VERSION=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)

bin="$root/.cache/bin"
mkdir -p "$bin"
export PATH="$bin:$PATH"

check=0
case "${1:-}" in
--check) check=1 ;;
"") ;;
*)
	echo "usage: hack/gen-proto.sh [--check]" >&2
	exit 2
	;;
esac

source hack/apt-lib.sh
source hack/gotool-lib.sh

if ! command -v protoc >/dev/null 2>&1; then
	echo "gen-proto.sh: installing protobuf-compiler"
	apt_install gen-proto.sh protobuf-compiler
fi

# install_plugin NAME PACKAGE VERSION: NAME at VERSION in .cache/bin (see
# go_tool), under the name protoc looks for.
install_plugin() {
	local path
	path=$(go_tool "$1" "$2" "$3")
	ln -sfn "${path##*/}" "$bin/$1"
}
install_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

out="$root"
if [ "$check" -eq 1 ]; then
	out=$(mktemp -d)
	trap 'rm -rf "$out"' EXIT
	mkdir -p "$out/packet/ingestpb"
fi

# paths=source_relative puts the .pb.go files beside the .proto.
protoc -I "$root" \
	--go_out="$out" --go_opt=paths=source_relative \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
	packet/ingestpb/ingest.proto

if [ "$check" -eq 1 ]; then
	for f in ingest.pb.go ingest_grpc.pb.go; do
		if ! cmp -s "$out/packet/ingestpb/$f" "packet/ingestpb/$f"; then
			echo "gen-proto.sh: packet/ingestpb/$f is out of date; run make generate-proto and commit it" >&2
			diff -u "packet/ingestpb/$f" "$out/packet/ingestpb/$f" | head -40 >&2 || true
			exit 1
		fi
	done
	echo "gen-proto.sh: generated code is up to date"
else
	echo "gen-proto.sh: regenerated packet/ingestpb"
fi
