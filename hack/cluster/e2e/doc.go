// Package e2e is connscope's end-to-end test on a real single-node
// Kubernetes cluster on this machine (hack/cluster/up.sh: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, containerd and
// runc, kubelet, kube-proxy, CNI bridge, CoreDNS; the node's network in a
// namespace of its own). It installs connscope as a user would (the Helm
// chart and the images of hack/images.sh), applies a SamplingPolicy at
// probability 1, drives real traffic to a server on the node (hack/demo.sh
// with the node's namespace as its server: normal clients, a scanner, a
// middlebox that drops after a forbidden Host, an injected RST), and checks
// what the classifier's API returns, the policy's status, the agent's
// capabilities at run time, that deleting the policy leaves no rule on the
// node, that `helm uninstall` leaves nothing but the CRD, and that the
// cluster is removed without a trace.
//
// It runs only under `make e2e` (CONNSCOPE_E2E=1), which builds and
// installs what it needs first; `go test ./...` skips it. It needs root.
// It does not test the chart's options or the controller's logic in
// detail (the envtest suites do that).
package e2e
