package controllers

import (
	"context"

	"flag"
	"github.com/go-logr/logr"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/internal/envtestsuite"
)

// The envtest suite: one real kube-apiserver and etcd for the package,
// the generated CRD installed, and the two namespaces the controller
// manages. There is no kube-controller-manager: tests set the DaemonSets'
// and Deployments' status as those controllers would, and nothing
// garbage-collects.

var (
	testCfg    *rest.Config
	k8s        client.Client
	testScheme = runtime.NewScheme()
	verbose    = flag.Bool("controller-log", false, "print the controller's log")
)

func TestMain(m *testing.M) {
	flag.Parse()
	_ = clientgoscheme.AddToScheme(testScheme)
	_ = samplingv1alpha1.AddToScheme(testScheme)
	if *verbose {
		ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	} else {
		ctrl.SetLogger(logr.Discard())
	}
	os.Exit(envtestsuite.Run(m, "the controller tests", filepath.Join("..", "config", "crd", "bases"), setupSuite))
}

// setupSuite keeps the API server's config, makes the client and creates
// the two namespaces the controller manages.
func setupSuite(cfg *rest.Config) error {
	testCfg = cfg
	var err error
	if k8s, err = client.New(cfg, client.Options{Scheme: testScheme}); err != nil {
		return err
	}
	for _, ns := range []string{DefaultAgentNamespace, DefaultClassifierNamespace} {
		if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	return nil
}

// testOptions are the controller's options in tests: small pools, so that
// exhaustion is quick to reach.
func testOptions() Options {
	o := DefaultOptions()
	o.Image = "connscope/connscope:test"
	o.LabelBits = Range{Min: 16, Max: 18}
	o.NFLOGGroups = Range{Min: 1000, Max: 1002}
	return o
}

// testController is a running manager with the reconciler, configured as
// `connscope controller` configures it.
type testController struct {
	opts  Options
	edits []func(*ctrl.Options)
	stop  func()
}

// startController runs the controller until the test ends (after the
// test's own cleanups, so that deleted policies lose their finalizer).
// edits change the manager's options (leader election, for example).
func startController(t *testing.T, opts Options, edits ...func(*ctrl.Options)) *testController {
	t.Helper()
	c := &testController{opts: opts, edits: edits}
	c.stop = runManager(t, opts, edits...)
	t.Cleanup(func() { c.stop() })
	return c
}

// restart stops the controller and starts a new one: a new process, as
// far as the controller can tell.
func (c *testController) restart(t *testing.T) {
	t.Helper()
	c.stop()
	c.stop = runManager(t, c.opts, c.edits...)
}

func runManager(t *testing.T, opts Options, edits ...func(*ctrl.Options)) (stop func()) {
	t.Helper()
	mopts := ctrl.Options{
		Scheme:                 testScheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  CacheOptions(opts),
		Controller:             ctrlConfigForTests(),
	}
	for _, edit := range edits {
		edit(&mopts)
	}
	mgr, err := ctrl.NewManager(testCfg, mopts)
	if err != nil {
		t.Fatal(err)
	}
	if err := NewSamplingPolicyReconciler(mgr, opts).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		// An error after the stop (a released leader lease is reported
		// as lost) is the stop's.
		if err := mgr.Start(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("manager: %v", err)
		}
	}()
	stopped := false
	return func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
}

// eventually polls cond until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
}
