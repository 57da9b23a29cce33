#!/usr/bin/env bash
# down.sh stops the cluster hack/cluster/up.sh started and removes what it
# made: its processes (by the PIDs up.sh recorded, each checked to still
# carry CONNSCOPE_CLUSTER=NAME in its environment), the containers, the
# mounts under its folder, the pods' cgroups, the node's network namespace
# (its rules go with it) and the folder. Safe to run twice, and on a
# half-started cluster.
#
# Order (a containerd stopped first would leave shims and containers
# running): the controller manager and scheduler, so that nothing is
# recreated; every pod deleted through the API and stopped by kubelet (the
# agents remove their rules on SIGTERM); kubelet; remaining containers
# killed with ctr; containerd; kube-proxy, CoreDNS, the API server, etcd.
#
# Environment: CLUSTER_NAME, CLUSTER_DIR as for up.sh; CLUSTER_LOGS_TO=DIR
# copies the logs there before the folder is removed.
set -uo pipefail

name="${CLUSTER_NAME:-connscope}"
dir="${CLUSTER_DIR:-/var/tmp/connscope-cluster/$name}"
netns="csk-$name"
cgroup_root="/connscope-$name"
marker="CONNSCOPE_CLUSTER=$name"

log() { echo "cluster/down: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "needs root; run it with sudo"
	exit 1
fi
[ -f "$dir/netns" ] && netns=$(cat "$dir/netns")
[ -f "$dir/cgroup-root" ] && cgroup_root=$(cat "$dir/cgroup-root")

# ours PID: the process is alive and was started by up.sh for this cluster.
# The environment is read whole first: with pipefail, `tr | grep -q` fails
# when grep stops at the match before tr is done (SIGPIPE).
ours() {
	local env
	env=$({ tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null) || return 1
	grep -qx "$marker" <<<"$env"
}
pid_of() { [ -f "$dir/pids" ] && awk -v w="$1" '$1 == w { print $2 }' "$dir/pids" | tail -n 1; }

# stop WHAT [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 10).
stop() {
	local pid
	pid=$(pid_of "$1")
	[ -n "$pid" ] || return 0
	ours "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq $((${2:-10} * 10))); do
		ours "$pid" || return 0
		sleep 0.1
	done
	log "$1 ($pid) did not stop on SIGTERM; SIGKILL"
	kill -KILL "$pid" 2>/dev/null
	sleep 0.2
}

if [ ! -d "$dir" ] && [ ! -e "/run/netns/$netns" ]; then
	log "no cluster $name ($dir)"
	exit 0
fi
log "stopping cluster $name"

stop kube-controller-manager
stop kube-scheduler
kubelet_pid=$(pid_of kubelet)
api_pid=$(pid_of kube-apiserver)
if [ -n "$kubelet_pid" ] && ours "$kubelet_pid" && [ -n "$api_pid" ] && ours "$api_pid" && [ -x "$dir/bin/kubectl" ]; then
	log "deleting every pod (kubelet stops them)"
	"$dir/bin/kubectl" delete pods --all --all-namespaces --grace-period=10 --timeout=60s --wait=true \
		--request-timeout=70s >/dev/null 2>&1 || log "not every pod was gone in time; killing the rest"
fi
stop kubelet

sock="$dir/containerd.sock"
cpid=$(pid_of containerd)
if [ -n "$cpid" ] && ours "$cpid" && [ -S "$sock" ]; then
	ctr=(ctr --address "$sock" -n k8s.io)
	for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
		"${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1
	done
	sleep 0.5
	for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
		"${ctr[@]}" tasks rm -f "$c" >/dev/null 2>&1
	done
	for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
		"${ctr[@]}" containers rm "$c" >/dev/null 2>&1
	done
fi
stop containerd 20
for p in kube-proxy kube-apiserver etcd; do stop "$p"; done

# Whatever is left: processes still carrying the marker (containerd's shims
# inherit it), and processes in the pods' cgroups.
for e in /proc/[0-9]*/environ; do
	p=${e#/proc/}
	p=${p%/environ}
	[ "$p" = $$ ] && continue
	if ours "$p"; then
		log "killing leftover $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100) ($p)"
		kill -KILL "$p" 2>/dev/null
	fi
done
for h in /sys/fs/cgroup/*/; do
	cg="$h${cgroup_root#/}"
	[ -d "$cg" ] || continue
	find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | while read -r p; do
		kill -KILL "$p" 2>/dev/null
	done
done
sleep 0.5

# Mounts under the folder (kubelet's volumes and its own bind mount,
# containerd's root file systems, shm and network namespaces), deepest first.
if [ -d "$dir" ]; then
	real=$(realpath "$dir")
	awk -v d="$real/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
	done
	awk -v d="$real" '$5 == d { print $5 }' /proc/self/mountinfo | while read -r m; do umount -l "$m"; done
fi

# The pods' cgroups, deepest first.
for h in /sys/fs/cgroup/*/; do
	cg="$h${cgroup_root#/}"
	[ -d "$cg" ] || continue
	find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
	[ -d "$cg" ] && log "cgroup $cg left (processes still in it?)"
done

if [ -e "/run/netns/$netns" ]; then
	ip netns del "$netns" || log "could not delete the network namespace $netns"
fi

if [ -d "$dir" ]; then
	if [ -n "${CLUSTER_LOGS_TO:-}" ]; then
		mkdir -p "$CLUSTER_LOGS_TO" && cp -r "$dir/logs" "$dir/pod-logs" "$CLUSTER_LOGS_TO/" 2>/dev/null
		log "logs copied to $CLUSTER_LOGS_TO"
	fi
	rm -rf "$dir" || log "could not remove $dir"
fi
# The default parent folder goes too once no cluster is left in it.
[ -z "${CLUSTER_DIR:-}" ] && rmdir /var/tmp/connscope-cluster 2>/dev/null
log "cluster $name removed"
