// Package envtestsuite runs a test package against one real kube-apiserver
// and etcd (controller-runtime's envtest) with connscope's CRDs installed:
// a TestMain calls Run, and each test that needs the API server calls
// NeedEnv first. It is used by api/v1alpha1 and controllers.
//
// Where the binaries come from: KUBEBUILDER_ASSETS names their folder
// (hack/envtest.sh builds them into .cache/envtest and prints it; `make
// test` sets it). When it is unset, Run fails the whole package under
// CONNSCOPE_REQUIRE_ENVTEST (as CI sets it), and otherwise runs the tests
// so that each NeedEnv skips with a message saying how to get the binaries.
//
// What it does not do: it does not look for or install the binaries
// itself, runs no kube-controller-manager or other controllers (nothing
// garbage-collects), creates no namespaces or users (a package's setup
// function does what it needs), and starts one API server per test binary.
// The chart tests (charts/) need helm, kubectl and two API servers
// without CRDs, and keep their own TestMain.
package envtestsuite

import (
	"fmt"
	"os"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// missing is why the tests skip (KUBEBUILDER_ASSETS unset), or "".
var missing string

// Run starts envtest with the CRDs in crdDir (a path relative to the test
// package, e.g. ../config/crd/bases), calls setup with the API server's
// config, runs the tests and stops envtest. It returns the exit code for
// os.Exit: 1, with the reason on stderr, when the API server does not
// start or setup fails. tests names the package's tests in the message of
// NeedEnv's skip ("the controller tests").
func Run(m *testing.M, tests, crdDir string, setup func(cfg *rest.Config) error) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CONNSCOPE_REQUIRE_ENVTEST") != "" {
			fmt.Fprintln(os.Stderr, "CONNSCOPE_REQUIRE_ENVTEST is set but KUBEBUILDER_ASSETS is not: run `make envtest` (hack/envtest.sh prints the folder)")
			return 1
		}
		missing = "KUBEBUILDER_ASSETS is unset: " + tests + " need kube-apiserver and etcd (`make test` sets it up, or export KUBEBUILDER_ASSETS=$(hack/envtest.sh))"
		return m.Run()
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{crdDir},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		// Start may fail after it started etcd and the API server (a
		// CRD the API server refuses): stop what it started.
		_ = env.Stop()
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if err := setup(cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// NeedEnv skips the test when Run found no envtest binaries.
func NeedEnv(t testing.TB) {
	t.Helper()
	if missing != "" {
		t.Skip(missing)
	}
}
