#!/usr/bin/env bash
# Builds connscope's container images as archives in .cache/images, without
# a Docker engine or a registry (Debian 12, root for apt-get):
#
#   connscope/connscope:TAG  .cache/images/connscope-TAG.tar
#       /usr/local/bin/connscope (static, CGO_ENABLED=0) and iptables with
#       both backends from Debian's packages: /usr/sbin/xtables-nft-multi and
#       xtables-legacy-multi, iptables/ip6tables[-save|-restore] -> nft,
#       iptables-legacy/ip6tables-legacy[-save|-restore] -> legacy,
#       iptables-nft/... -> nft, their shared libraries and extensions;
#       /etc/passwd with root and nonroot (65532); USER 65532:65532
#       (the agent's pod runs as root, the controller and classifier as 65532).
#   connscope/pause:TAG      .cache/images/pause-TAG.tar
#       /pause (hack/imagebuild/pause: sleeps until SIGTERM, reaps children);
#       USER 65535:65535.
#
# The archives are in the `docker save` format: `ctr -n k8s.io images import
# FILE` (containerd), `docker load -i`, `podman load -i` and
# `kind load image-archive` read them. The repository's Dockerfile builds
# the same connscope image where a Docker engine and registries exist.
#
# Usage: hack/images.sh [--tag TAG] [--out DIR]   (TAG defaults to latest)
# Prints one line per image: REF ARCHIVE DIGEST.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=latest
out=.cache/images
while [ $# -gt 0 ]; do
	case "$1" in
	--tag) tag="$2"; shift 2 ;;
	--tag=*) tag="${1#*=}"; shift ;;
	--out) out="$2"; shift 2 ;;
	--out=*) out="${1#*=}"; shift ;;
	-h|--help) sed -n '2,24p' "$0"; exit 0 ;;
	*) echo "images.sh: unknown argument $1 (use --tag TAG, --out DIR)" >&2; exit 2 ;;
	esac
done
case "$tag" in
[A-Za-z0-9_]*) ;;
*) echo "images.sh: --tag $tag: a tag starts with a letter, digit or _" >&2; exit 2 ;;
esac

export PATH="/usr/local/go/bin:$PATH"
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/connscope-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The Debian packages iptables needs at run time: iptables and what it
# depends on, recursively (libc6, libxtables12, libnftnl11, ...). Maintainer
# scripts are not run: the alternatives links they would make are made below.
debs="$PWD/.cache/images/debs"
mkdir -p "$debs"
if ! apt-cache show iptables >/dev/null 2>&1; then
	apt-get update -qq
fi
pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
	--no-breaks --no-replaces --no-enhances iptables | grep -v '^[ <]' | sort -u)
want=()
for p in $pkgs; do
	v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
	# apt-get download names files PKG_VERSION_ARCH.deb with ':' escaped.
	f=$(ls "$debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
	[ -n "$f" ] || want+=("$p=$v")
done
if [ ${#want[@]} -gt 0 ]; then
	(cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${want[@]}" >/dev/null)
fi

root="$work/connscope"
mkdir -p "$root"
for p in $pkgs; do
	v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
	f=$(ls "$debs/${p}_${v//:/%3a}_"*.deb | head -1)
	dpkg-deb -x "$f" "$root"
done
# Documentation, manuals, locales and package-manager hooks are not needed.
rm -rf "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info \
	"$root"/usr/share/lintian "$root"/usr/share/locale "$root"/usr/share/bug \
	"$root"/usr/share/gcc "$root"/usr/share/gdb "$root"/etc/init.d \
	"$root"/usr/lib/x86_64-linux-gnu/gconv
for f in "$root"/usr/sbin/xtables-nft-multi "$root"/usr/sbin/xtables-legacy-multi; do
	[ -x "$f" ] || { echo "images.sh: $f missing from Debian's iptables package" >&2; exit 1; }
done
# What update-alternatives would make: the plain names run nft (Debian 12's
# default); the suffixed names are the package's own links.
for fam in iptables ip6tables; do
	for s in "" -save -restore; do
		ln -sfn xtables-nft-multi "$root/usr/sbin/$fam$s"
		ln -sfn xtables-nft-multi "$root/usr/sbin/$fam-nft$s"
		ln -sfn xtables-legacy-multi "$root/usr/sbin/$fam-legacy$s"
	done
done
mkdir -p "$root"/etc "$root"/tmp "$root"/run "$root"/var "$root"/usr/local/bin "$root"/home/nonroot
ln -sfn ../run "$root"/var/run
chmod 1777 "$root"/tmp
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
# The loader's cache, so that iptables finds its libraries at once.
[ -f "$root/etc/ld.so.conf" ] || echo 'include /etc/ld.so.conf.d/*.conf' >"$root/etc/ld.so.conf"
ldconfig -r "$root"

CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/usr/local/bin/connscope" ./cmd/connscope

pauseroot="$work/pause"
mkdir -p "$pauseroot"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$pauseroot/pause" ./hack/imagebuild/pause

go build -o "$work/imagebuild" ./hack/imagebuild
"$work/imagebuild" build --rootfs "$root" --ref "connscope/connscope:$tag" \
	--out "$out/connscope-$tag.tar" --entrypoint /usr/local/bin/connscope --user 65532:65532
"$work/imagebuild" build --rootfs "$pauseroot" --ref "connscope/pause:$tag" \
	--out "$out/pause-$tag.tar" --entrypoint /pause --user 65535:65535
