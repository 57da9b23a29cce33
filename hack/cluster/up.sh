#!/usr/bin/env bash
# up.sh starts a real single-node Kubernetes cluster on this machine, with
# no Docker engine, and returns once the node is Ready and cluster DNS
# answers. hack/cluster/down.sh stops it and removes everything it made.
#
# The whole cluster lives in a network namespace of its own (the node's:
# csk-NAME), so the machine's own interfaces, routes and netfilter rules are
# never touched: kube-proxy's and the CNI bridge's rules, the pods' bridge
# cni0 and the hostNetwork pods are all in that namespace. Every process is
# started there with `nsenter --net` (not `ip netns exec`, which remounts
# /sys and hides the cgroup mounts from kubelet):
#
#   etcd (Debian's etcd-server), kube-apiserver, kube-controller-manager,
#   kube-scheduler (hack/k8s-binaries.sh: built from the k8s.io/kubernetes
#   module), containerd (Debian's 1.6, with its own root, state, socket and
#   runc root), runc v1.5.2, kubelet (cgroupfs driver, cgroups v1, pods under
#   the cgroup /connscope-NAME), kube-proxy (iptables mode), the CNI plugins
#   bridge, host-local, loopback and portmap (hack/cluster/setup.sh), and
#   CoreDNS as a Deployment behind the kube-dns Service (10.96.0.10).
#
# Addresses, all inside the node's namespace: the node 10.240.0.2 (on
# interface node0), pods 10.244.0.0/24 on the bridge cni0, services
# 10.96.0.0/16. Certificates are made with openssl at start (an EC CA, one
# identity per component, kubeconfigs in DIR).
#
# Images: no registry is reachable, so the image archives in IMAGES_DIR
# (default .cache/images, from hack/images.sh: connscope/pause:latest is the
# sandbox image, connscope/connscope:latest) and .cache/cluster/images
# (hack/cluster/images.sh: connscope/coredns:latest) are imported into
# containerd with ctr. Pods must use imagePullPolicy IfNotPresent or
# Never with those names.
#
# Environment:
#   CLUSTER_NAME   name of the cluster (default connscope): the namespace is
#                  csk-NAME, the node NAME, the folder /var/tmp/connscope-cluster/NAME
#   CLUSTER_DIR    the folder instead (logs in DIR/logs, kubeconfig DIR/admin.kubeconfig)
#   IMAGES_DIR     folder of image archives to import (default .cache/images)
#   K8S_ASSETS     folder of the Kubernetes binaries (default: what
#                  hack/k8s-binaries.sh builds and prints)
#
# After it returns, DIR/env holds NETNS, KUBECONFIG and PATH for DIR/bin
# (kubectl and helm wrappers that run in the node's namespace), e.g.
#   . /var/tmp/connscope-cluster/connscope/env && kubectl get pods -A
# On any failure it stops and removes what it started (down.sh), unless
# CLUSTER_KEEP_ON_FAILURE=1 (to read the logs; then run down.sh).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
name="${CLUSTER_NAME:-connscope}"
if ! [[ "$name" =~ ^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$ ]]; then
	echo "cluster/up: CLUSTER_NAME $name: use 1 to 20 lower-case letters, digits and '-' (a node name and a network namespace name)" >&2
	exit 2
fi
dir="${CLUSTER_DIR:-/var/tmp/connscope-cluster/$name}"
images="${IMAGES_DIR:-$root/.cache/images}"
netns="csk-$name"

log() { echo "cluster/up: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "needs root (network namespaces, containerd, kubelet); run it with sudo"
	exit 1
fi
if [[ -e "/run/netns/$netns" || -e "$dir/pids" ]]; then
	log "a cluster $name is already there ($dir, namespace $netns): hack/cluster/down.sh first (CLUSTER_NAME=$name)"
	exit 1
fi
if ! compgen -G "$images/*.tar" >/dev/null; then
	log "no image archives in $images: run hack/images.sh first (or set IMAGES_DIR)"
	exit 1
fi

assets="${K8S_ASSETS:-}"
[ -n "$assets" ] || assets="$(bash "$root/hack/k8s-binaries.sh")"
bash "$root/hack/cluster/setup.sh"
bash "$root/hack/cluster/images.sh" >/dev/null
tools="$root/.cache/cluster/bin"
cni_bin="$root/.cache/cluster/cni"

node_ip=10.240.0.2
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
api_ip=10.96.0.1
dns_ip=10.96.0.10
cgroup_root="/connscope-$name"
# Every process started carries this in its environment; down.sh kills a
# recorded PID only if it still does.
marker="CONNSCOPE_CLUSTER=$name"

mkdir -p "$dir"/{logs,pki,bin,etcd,kubelet,pod-logs,cni/net.d,cni/ipam,containerd/root,containerd/state,containerd/runc}
: >"$dir/pids"
echo "$netns" >"$dir/netns"
echo "$cgroup_root" >"$dir/cgroup-root"

failed() {
	local rc=$?
	trap - EXIT
	if [ "$rc" -ne 0 ]; then
		log "failed (exit $rc); logs in $dir/logs"
		for f in "$dir"/logs/*.log; do
			[ -f "$f" ] || continue
			echo "--- last lines of $f" >&2
			tail -n 15 "$f" >&2
		done
		if [ "${CLUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
			log "CLUSTER_KEEP_ON_FAILURE=1: left running; CLUSTER_NAME=$name hack/cluster/down.sh removes it"
		else
			CLUSTER_DIR="$dir" CLUSTER_NAME="$name" bash "$root/hack/cluster/down.sh" || true
		fi
	fi
	exit "$rc"
}
trap failed EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_ns() { nsenter --net="/run/netns/$netns" "$@"; }

# start NAME CMD...: runs CMD in the node's namespace in the background,
# output in logs/NAME.log, and records its PID (setsid, env and nsenter
# exec CMD). A session of its own: a Ctrl-C meant for a script does not
# reach the cluster, which down.sh stops in order.
start() {
	local what=$1
	shift
	setsid env "$marker" nsenter --net="/run/netns/$netns" "$@" </dev/null >"$dir/logs/$what.log" 2>&1 &
	echo "$what $!" >>"$dir/pids"
}

# wait_for WHAT SECONDS CMD...: until CMD succeeds.
wait_for() {
	local what=$1 secs=$2
	shift 2
	for _ in $(seq $((secs * 2))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.5
	done
	log "$what not ready after ${secs}s"
	return 1
}

# Network -------------------------------------------------------------------
log "network namespace $netns (node $node_ip)"
ip netns add "$netns"
in_ns ip link set lo up
# The node's address on an interface of its own (a veth pair whose both
# ends stay in the namespace: the kernel here has no dummy interfaces).
in_ns ip link add node0 type veth peer name node0-peer
in_ns ip addr add "$node_ip/32" dev node0
in_ns ip link set node0-peer up
in_ns ip link set node0 up
# Services' addresses need a route for the node's own connections (kube-proxy
# then rewrites them to a pod on cni0).
in_ns ip route add "$service_cidr" dev node0 src "$node_ip"
in_ns sysctl -q -w net.ipv4.ip_forward=1
# Bridged pod traffic goes through the namespace's iptables (kube-proxy's
# service rules between pods on the bridge); the setting is per namespace.
in_ns sysctl -q -w net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

cat >"$dir/cni/net.d/10-connscope.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "node-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$dir/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

# Certificates --------------------------------------------------------------
log "certificates and kubeconfigs"
pki="$dir/pki"
(
	cd "$pki"
	ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
	openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=connscope-cluster-$name-ca" \
		-keyout ca.key -out ca.crt \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	# cert FILE SUBJECT EXTENDED_KEY_USAGE [SANS]
	cert() {
		openssl req -new "${ec[@]}" -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
		{
			echo "basicConstraints=CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=$3"
			[ -z "${4:-}" ] || echo "subjectAltName=$4"
		} >"$1.ext"
		openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
			-days 30 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
		rm -f "$1.csr" "$1.ext"
	}
	cert apiserver "/CN=kube-apiserver" serverAuth \
		"IP:$node_ip,IP:$api_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	cert admin "/O=system:masters/CN=connscope-cluster-admin" clientAuth
	cert controller-manager "/CN=system:kube-controller-manager" clientAuth
	cert scheduler "/CN=system:kube-scheduler" clientAuth
	cert kube-proxy "/CN=system:kube-proxy" clientAuth
	cert kubelet "/O=system:nodes/CN=system:node:$name" clientAuth
	cert kubelet-serving "/CN=$name" serverAuth "IP:$node_ip,DNS:$name"
	openssl ecparam -name prime256v1 -genkey -noout -out sa.key
	openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
	chmod 600 ./*.key
)

kubeconfig() { # NAME: pki/NAME.{crt,key} -> NAME.kubeconfig
	cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: connscope-$name
  cluster:
    server: https://$node_ip:6443
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: connscope-$name
  context:
    cluster: connscope-$name
    user: $1
current-context: connscope-$name
EOF
	chmod 600 "$dir/$1.kubeconfig"
}
for k in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$k"; done

# kubectl and helm for this cluster: they run in the node's namespace.
for t in kubectl helm; do
	case $t in
	kubectl) b="$assets/kubectl" ;;
	helm) b="$(bash "$root/hack/setup-helm.sh")" ;;
	esac
	cat >"$dir/bin/$t" <<EOF
#!/bin/sh
# $t for the cluster $name: runs in its node's network namespace.
export KUBECONFIG="$dir/admin.kubeconfig"
exec nsenter --net=/run/netns/$netns "$b" "\$@"
EOF
	chmod +x "$dir/bin/$t"
done
cat >"$dir/env" <<EOF
# . this file: kubectl and helm for the cluster $name
export NETNS=$netns
export KUBECONFIG=$dir/admin.kubeconfig
export PATH=$dir/bin:\$PATH
EOF
kubectl="$dir/bin/kubectl"

# Control plane -------------------------------------------------------------
log "etcd"
start etcd "$assets/etcd" --name "$name" --data-dir "$dir/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster "$name=http://127.0.0.1:2380" --unsafe-no-fsync
wait_for etcd 60 in_ns curl -fsS http://127.0.0.1:2379/health

log "kube-apiserver"
start kube-apiserver "$assets/kube-apiserver" \
	--etcd-servers http://127.0.0.1:2379 \
	--advertise-address "$node_ip" --bind-address 0.0.0.0 --secure-port 6443 \
	--service-cluster-ip-range "$service_cidr" \
	--client-ca-file "$pki/ca.crt" \
	--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
	--kubelet-client-key "$pki/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
	--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
	--allow-privileged=true --profiling=false
wait_for kube-apiserver 120 in_ns curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
	"https://$node_ip:6443/readyz"

log "kube-controller-manager, kube-scheduler"
start kube-controller-manager "$assets/kube-controller-manager" \
	--kubeconfig "$dir/controller-manager.kubeconfig" \
	--authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
	--authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
	--bind-address 127.0.0.1 --leader-elect=false \
	--service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
	--use-service-account-credentials=true \
	--service-cluster-ip-range "$service_cidr" --allocate-node-cidrs=false
start kube-scheduler "$assets/kube-scheduler" \
	--kubeconfig "$dir/scheduler.kubeconfig" \
	--authentication-kubeconfig "$dir/scheduler.kubeconfig" \
	--authorization-kubeconfig "$dir/scheduler.kubeconfig" \
	--bind-address 127.0.0.1 --leader-elect=false

# Node ----------------------------------------------------------------------
log "containerd"
cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "connscope/pause:latest"
  # root here lacks CAP_SYS_RESOURCE: an oom_score_adj below the caller's
  # own is refused, and every sandbox would fail.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$tools/runc"
        Root = "$dir/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$dir/cni/net.d"
EOF
start containerd containerd --config "$dir/containerd/config.toml"
ctr=(ctr --address "$dir/containerd.sock" -n k8s.io)
wait_for containerd 60 "${ctr[@]}" version

log "importing images from $images and $root/.cache/cluster/images"
for f in "$images"/*.tar "$root"/.cache/cluster/images/*.tar; do
	[ -f "$f" ] || continue
	"${ctr[@]}" images import "$f" >"$dir/logs/ctr-import.log" 2>&1 ||
		{ log "ctr images import $f failed:"; cat "$dir/logs/ctr-import.log" >&2; exit 1; }
done
# Read the list whole first: with pipefail, `ctr ... | grep -q` fails when
# grep stops at a match before ctr has written the rest (SIGPIPE).
imported=$("${ctr[@]}" images ls -q)
grep -v '^sha256:' <<<"$imported" | sed 's/^/  /' >&2
if ! grep -qx 'docker.io/connscope/pause:latest' <<<"$imported"; then
	log "no connscope/pause:latest among the imported images (the sandbox image)"
	exit 1
fi

log "kubelet (pods under the cgroup $cgroup_root)"
# The pods' parent cgroup, in every v1 hierarchy; cpuset needs its CPUs and
# memory nodes copied from its parent before anything can join it.
for h in /sys/fs/cgroup/*/; do
	[ -d "$h" ] && [ ! -L "${h%/}" ] || continue
	mkdir -p "$h${cgroup_root#/}"
	if [ -f "$h/cpuset.cpus" ]; then
		cat "$h/cpuset.cpus" >"$h${cgroup_root#/}/cpuset.cpus"
		cat "$h/cpuset.mems" >"$h${cgroup_root#/}/cpuset.mems"
	fi
done
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups are v1 on these machines.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix://$dir/containerd.sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
resolvConf: $dir/resolv.conf
podLogsDir: $dir/pod-logs
failSwapOn: false
serializeImagePulls: false
hairpinMode: hairpin-veth
# A shared test machine: evict only when the disk is nearly full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  imagefs.available: 2%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOF
# Pods with dnsPolicy Default get this; nothing outside is reachable.
echo "nameserver $dns_ip" >"$dir/resolv.conf"
start kubelet "$assets/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
	--root-dir "$dir/kubelet" --node-ip "$node_ip" --hostname-override "$name"

log "kube-proxy"
cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $dir/kube-proxy.kubeconfig
hostnameOverride: $name
clusterCIDR: $pod_cidr
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# The conntrack table size is the machine's (not per namespace): leave it.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
start kube-proxy "$assets/kube-proxy" --config "$dir/kube-proxy.yaml"

wait_for "node $name registered" 120 "$kubectl" get node "$name"
wait_for "node $name Ready" 180 "$kubectl" wait --for=condition=Ready "node/$name" --timeout=1s

# Cluster DNS ---------------------------------------------------------------
log "CoreDNS (kube-dns at $dns_ip)"
"$kubectl" apply -f "$root/hack/cluster/coredns.yaml" >&2
wait_for "CoreDNS" 180 "$kubectl" -n kube-system rollout status deployment/coredns --timeout=1s
# The API's Service name, asked of the kube-dns Service from the node's
# namespace (through kube-proxy's rules to the CoreDNS pod).
wait_for "a DNS answer for kubernetes.default from $dns_ip" 60 \
	sh -c "nsenter --net=/run/netns/$netns dig +short +time=1 +tries=1 @$dns_ip kubernetes.default.svc.cluster.local | grep -qx $api_ip"

log "cluster $name is up: . $dir/env; kubectl get pods -A"
