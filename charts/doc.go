// Package charts holds the tests of the Helm chart (charts/connscope) and
// of the kustomize configuration (config/default) against a real
// kube-apiserver and etcd (envtest) with the real helm and kubectl
// binaries: lint, server-side dry runs of the rendered manifests, helm
// install, upgrade and uninstall, the values schema, and pod-security
// admission of every pod connscope runs. It has no code of its own; the
// chart's generated files are written by hack/gen-chart.sh.
package charts
