# gotool-lib.sh is sourced by the hack/ scripts that build a Go command from
# the module proxy into .cache/bin (setup-helm.sh, gen-manifests.sh,
# gen-proto.sh). It only defines a function; sourcing it builds nothing.

# go_tool NAME PACKAGE VERSION: prints the path of .cache/bin/NAME-VERSION,
# first building it with `go install PACKAGE@VERSION` (outside this
# module: GOFLAGS unset) when it is not there yet. The build goes to a
# temporary folder and is moved into place whole, so an interrupted build
# leaves nothing that looks installed. Run from the repository's root.
go_tool() {
	local name=$1 pkg=$2 version=$3
	local bin="$PWD/.cache/bin"
	local path="$bin/$name-$version"
	if [[ ! -x $path ]]; then
		echo "${0##*/}: building $name $version into .cache/bin" >&2
		mkdir -p "$bin"
		local tmp
		tmp=$(mktemp -d)
		if ! GOFLAGS= GOBIN="$tmp" go install "$pkg@$version"; then
			rm -rf "$tmp"
			return 1
		fi
		mv "$tmp/$name" "$path"
		rm -rf "$tmp"
	fi
	echo "$path"
}
