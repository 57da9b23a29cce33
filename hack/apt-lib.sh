# apt-lib.sh is sourced by the hack/setup-*.sh scripts that install Debian
# packages as root or, when not root, through sudo (setup-browser.sh,
# setup-clickhouse.sh). It only defines a function; sourcing it installs
# nothing. It does not decide whether a package is needed (each script checks
# for its own command first and exits early when it is there), and it is not
# for the scripts that require root outright (setup-scenarios.sh,
# setup-bench.sh, cluster/setup.sh).

# apt_install NAME [VAR=value...] PKG...: runs `apt-get update`, then
# `apt-get install -y --no-install-recommends PKG...` (quiet, its output
# hidden), waiting up to 10 minutes for a dpkg lock another process holds.
# Runs as root, or through sudo when not root; when neither is possible it
# prints "NAME: need root or sudo to apt-get install PKG..." and exits 1.
# VAR=value arguments before the packages are put in the install's
# environment (they pass through sudo), e.g. RUNLEVEL=1 to keep a package's
# scripts from starting its service. DEBIAN_FRONTEND is noninteractive.
apt_install() {
	local name=$1
	shift
	local env=(DEBIAN_FRONTEND=noninteractive)
	while [[ $# -gt 0 && $1 == *=* ]]; do
		env+=("$1")
		shift
	done
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			sudo=(sudo)
		else
			echo "$name: need root or sudo to apt-get install $*" >&2
			exit 1
		fi
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
	"${sudo[@]}" env "${env[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}
