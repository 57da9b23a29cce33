#!/usr/bin/env bash
# images.sh packs the cluster's own DNS server, CoreDNS (built by
# hack/cluster/setup.sh), as connscope/coredns:latest into
# .cache/cluster/images/coredns.tar with hack/imagebuild, the packer
# hack/images.sh uses for connscope's images. hack/cluster/up.sh imports it
# with them. Idempotent: the archive is rewritten only when the binary is
# newer. Prints the archive's folder.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
GO="${GO:-go}"
bin="$root/.cache/cluster/bin/coredns"
out="$root/.cache/cluster/images"

bash "$root/hack/cluster/setup.sh"
mkdir -p "$out"
if [[ ! "$out/coredns.tar" -nt "$bin" ]]; then
	work=$(mktemp -d "${TMPDIR:-/tmp}/connscope-coredns-image.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	mkdir -p "$work/rootfs/etc/coredns"
	cp "$bin" "$work/rootfs/coredns"
	(cd "$root" && "$GO" build -o "$work/imagebuild" ./hack/imagebuild)
	"$work/imagebuild" build --rootfs "$work/rootfs" --ref connscope/coredns:latest \
		--out "$out/coredns.tar.tmp" --entrypoint /coredns --user 65532:65532 >&2
	mv "$out/coredns.tar.tmp" "$out/coredns.tar"
fi
echo "$out"
