#!/usr/bin/env bash
# demo.sh (make demo): connscope on a real single-node Kubernetes cluster on
# this machine, installed as a user would, with live traffic and the
# dashboard.
#
# It builds the images (hack/images.sh), starts the cluster
# (hack/cluster/up.sh: the node's network in a namespace of its own),
# installs the Helm chart, applies a SamplingPolicy at probability 1 on the
# interface s0, waits for the agent and the classifier, then runs
# hack/demo.sh with the node's namespace as its server: client and router
# namespaces, real traffic into the node (curl, SO_LINGER aborts, hping3,
# nmap, a middlebox, an RST injector), the classifier's Radar-style summary,
# then the dashboard on http://127.0.0.1:${DEMO_PORT:-8080}/ until Ctrl-C.
# On every exit the cluster is stopped and removed (hack/cluster/down.sh).
#
# Environment: CLUSTER_NAME (default demo), DEMO_PORT, DEMO_EXIT_AFTER_SUMMARY
# as for hack/demo.sh. The first run builds the Kubernetes binaries (about
# 15 minutes on 2 cores); later runs take about 2 minutes to the summary.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (a Kubernetes node: network namespaces, containerd, kubelet); run: sudo make demo" >&2
	exit 1
fi
if [ ! -f charts/connscope/Chart.yaml ]; then
	echo "demo: the Helm chart charts/connscope is not in this checkout; make demo-standalone runs the demo without a cluster" >&2
	exit 1
fi
export CLUSTER_NAME="${CLUSTER_NAME:-demo}"
dir="/var/tmp/connscope-cluster/$CLUSTER_NAME"
policy=demo

say() { printf '\n== %s\n' "$*"; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	say "stopping the cluster"
	bash hack/cluster/down.sh || true
	exit "$rc"
}

say "images (hack/images.sh)"
bash hack/images.sh
say "the cluster (hack/cluster/up.sh)"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash hack/cluster/up.sh
kubectl="$dir/bin/kubectl"
helm="$dir/bin/helm"

# hack/images.sh tags the images it loads latest; the chart defaults to its appVersion.
say "helm install connscope charts/connscope"
"$helm" install connscope charts/connscope --namespace default --wait --timeout 4m \
	--set image.tag=latest --set image.pullPolicy=Never

say "SamplingPolicy $policy: probability 1 on s0"
"$kubectl" apply -f - <<EOF
apiVersion: sampling.connscope.dev/v1alpha1
kind: SamplingPolicy
metadata:
  name: $policy
spec:
  probability: "1"
  interfaces: [s0]
  ipFamilies: [IPv4]
EOF
"$kubectl" -n connscope-agents wait --for=create "daemonset/connscope-$policy-agent" --timeout=2m
"$kubectl" -n connscope-system wait --for=create "deployment/connscope-$policy-classifier" --timeout=2m
"$kubectl" -n connscope-agents rollout status "daemonset/connscope-$policy-agent" --timeout=4m
"$kubectl" -n connscope-system rollout status "deployment/connscope-$policy-classifier" --timeout=4m
"$kubectl" wait "samplingpolicy/$policy" --for=condition=Ready --timeout=3m
"$kubectl" get samplingpolicies
"$kubectl" get pods -A -o wide

ip=$("$kubectl" -n connscope-system get service "connscope-$policy-classifier" -o 'jsonpath={.spec.clusterIP}')
say "traffic into the node (hack/demo.sh); the classifier's Service is $ip:8080"
DEMO_SERVER_NETNS="csk-$CLUSTER_NAME" DEMO_CLASSIFIER_URL="http://$ip:8080" bash hack/demo.sh
