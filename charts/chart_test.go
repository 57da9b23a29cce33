package charts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/controllers"
	"github.com/connscope/connscope/internal/version"
)

// Two API servers (envtest: a real kube-apiserver and etcd, no
// kube-controller-manager, so namespaces never finish terminating and
// Deployments never make pods): "kustomize" receives config/default and
// the dry runs, "helm" the release's install, upgrade and uninstall. Each
// has a kubeconfig file for the real helm and kubectl binaries.

const chartDir = "connscope"

var (
	scheme  = runtime.NewScheme()
	helmBin string
	kubectl string
	skipWhy string
)

type cluster struct {
	cfg        *rest.Config
	c          client.Client
	kubeconfig string
}

var kustomizeCluster, helmCluster *cluster

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	_ = clientgoscheme.AddToScheme(scheme)
	_ = samplingv1alpha1.AddToScheme(scheme)
	ctrllog.SetLogger(logr.Discard())
	require := os.Getenv("CONNSCOPE_REQUIRE_ENVTEST") != ""
	missing := func(why string) int {
		if require {
			fmt.Fprintln(os.Stderr, "CONNSCOPE_REQUIRE_ENVTEST is set but", why)
			return 1
		}
		skipWhy = why
		return m.Run()
	}
	helmBin = os.Getenv("HELM")
	if helmBin == "" {
		helmBin, _ = filepath.Abs(filepath.Join("..", ".cache", "bin", "helm"))
	}
	if _, err := os.Stat(helmBin); err != nil {
		return missing("helm is missing (" + helmBin + "): run hack/setup-helm.sh, or set HELM")
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return missing("KUBEBUILDER_ASSETS is unset: run `make envtest` (hack/envtest.sh prints the folder)")
	}
	// kubectl: $KUBECTL, else hack/setup-kubectl.sh's, else envtest's.
	kubectl = os.Getenv("KUBECTL")
	for _, p := range []string{filepath.Join("..", ".cache", "bin", "kubectl"), filepath.Join(assets, "kubectl")} {
		if kubectl != "" {
			break
		}
		if _, err := os.Stat(p); err == nil {
			kubectl, _ = filepath.Abs(p)
		}
	}
	if kubectl == "" {
		return missing("kubectl is missing: run hack/setup-kubectl.sh, or set KUBECTL")
	}
	tmp, err := os.MkdirTemp("", "connscope-charts-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	for _, cl := range []struct {
		name string
		dst  **cluster
	}{{"kustomize", &kustomizeCluster}, {"helm", &helmCluster}} {
		// Generous start-up time: the machine running the tests may be busy.
		env := &envtest.Environment{ControlPlaneStartTimeout: 3 * time.Minute, ControlPlaneStopTimeout: time.Minute}
		cfg, err := env.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "start envtest:", err)
			return 1
		}
		defer func() { _ = env.Stop() }()
		user, err := env.AddUser(envtest.User{Name: "connscope-chart-test", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		kc, err := user.KubeConfig()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		path := filepath.Join(tmp, cl.name+".kubeconfig")
		if err := os.WriteFile(path, kc, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c, err := client.New(cfg, client.Options{Scheme: scheme})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		*cl.dst = &cluster{cfg: cfg, c: c, kubeconfig: path}
	}
	// helm keeps its caches and repositories out of $HOME.
	for _, v := range []string{"HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"} {
		os.Setenv(v, filepath.Join(tmp, strings.ToLower(v)))
	}
	return m.Run()
}

func needEnv(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// run runs a program; a failure is returned with its output.
func run(t *testing.T, kubeconfig string, stdin []byte, prog string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(prog), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func mustRun(t *testing.T, kubeconfig string, stdin []byte, prog string, args ...string) string {
	t.Helper()
	out, err := run(t, kubeconfig, stdin, prog, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// objects splits a multi-document YAML stream.
func objects(t *testing.T, manifest string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decoding the manifest: %v", err)
		}
		if len(u.Object) > 0 {
			out = append(out, &u)
		}
	}
}

func find(objs []*unstructured.Unstructured, kind, namespace, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace && o.GetName() == name {
			return o
		}
	}
	return nil
}

func helmTemplate(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, "", nil, helmBin, append([]string{"template", "connscope", chartDir}, args...)...)
}

func kindsOf(objs []*unstructured.Unstructured) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName())
	}
	sort.Strings(ks)
	return ks
}

func TestHelmLint(t *testing.T) {
	needEnv(t)
	mustRun(t, "", nil, helmBin, "lint", "--strict", chartDir)
	mustRun(t, "", nil, helmBin, "lint", "--strict", chartDir,
		"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
		"--set", "grafanaDashboard.enabled=true", "--set", "crds.keep=false")
}

// The schema rejects unknown keys (typos) and wrong values, naming them.
func TestValuesSchemaRejectsTypos(t *testing.T) {
	needEnv(t)
	for _, tc := range []struct {
		set  string
		want []string
	}{
		{"controller.replica=3", []string{"controller", "additional properties 'replica' not allowed"}},
		{"imag.tag=v1", []string{"additional properties 'imag' not allowed"}},
		{"metrics.serviceMonitor.enable=true", []string{"serviceMonitor", "'enable' not allowed"}},
		{"controller.labelBits=sixteen", []string{"labelBits", "does not match pattern"}},
		{"image.pullPolicy=Sometimes", []string{"pullPolicy", "must be one of"}},
		{"controller.replicas=0", []string{"replicas", "minimum"}},
	} {
		out, err := run(t, "", nil, helmBin, "template", "connscope", chartDir, "--set", tc.set)
		if err == nil {
			t.Errorf("--set %s: rendered without error", tc.set)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("--set %s: the error does not say %q:\n%s", tc.set, w, out)
			}
		}
	}
	// The chart's own checks.
	out, err := run(t, "", nil, helmBin, "template", "connscope", chartDir, "--set", "controller.leaderElection=false")
	if err == nil || !strings.Contains(out, "controller.replicas > 1 needs controller.leaderElection: true") {
		t.Errorf("two replicas without leader election: %v\n%s", err, out)
	}
	out, err = run(t, "", nil, helmBin, "template", "connscope", chartDir, "--set", "namespaces.agents=connscope-system")
	if err == nil || !strings.Contains(out, "must differ") {
		t.Errorf("one namespace for both: %v\n%s", err, out)
	}
}

// appVersion is Chart.yaml's appVersion.
func appVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.AppVersion
}

// controllerImage is the image and the --image argument of the rendered
// controller Deployment.
func controllerImage(t *testing.T, manifest string) (image, arg string) {
	t.Helper()
	d := find(objects(t, manifest), "Deployment", "connscope-system", "connscope-controller")
	if d == nil {
		t.Fatal("no controller Deployment rendered")
	}
	cs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	c := cs[0].(map[string]any)
	for _, a := range c["args"].([]any) {
		if s := a.(string); strings.HasPrefix(s, "--image=") {
			arg = strings.TrimPrefix(s, "--image=")
		}
	}
	return c["image"].(string), arg
}

// A helm upgrade to a new chart must roll out its image: the default tag
// is the chart's appVersion, a version, never a moving tag that nodes
// holding an older copy would not pull again (IfNotPresent).
func TestImageTagDefaultsToAppVersion(t *testing.T) {
	needEnv(t)
	v := appVersion(t)
	if !regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$`).MatchString(v) {
		t.Errorf("Chart.yaml's appVersion %q is not a version such as 0.1.0", v)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "connscope/connscope:" + v},
		{[]string{"--set", "image.tag=v0.2.0"}, "connscope/connscope:v0.2.0"},
		{[]string{"--set", "image.repository=registry.example/cs", "--set", "image.tag="}, "registry.example/cs:" + v},
	} {
		image, arg := controllerImage(t, helmTemplate(t, tc.args...))
		if image != tc.want || arg != tc.want {
			t.Errorf("%v: controller image %q, --image=%q; want %q for both", tc.args, image, arg, tc.want)
		}
	}
}

// One release, one version: the chart's appVersion and the controller's
// default image (what config/default installs, and what a controller run
// without --image rolls out) name internal/version's (as --version does,
// cmd/connscope's TestVersionFlagPrintsTheRelease), so that kubectl apply
// -k and helm install run the same image, and neither a moving tag.
func TestReleaseVersionAgrees(t *testing.T) {
	if v := appVersion(t); v != version.Version {
		t.Errorf("Chart.yaml's appVersion is %q, internal/version's Version %q", v, version.Version)
	}
	if want := "connscope/connscope:" + version.Version; controllers.DefaultImage != want {
		t.Errorf("controllers.DefaultImage is %q, want %q", controllers.DefaultImage, want)
	}
	image, arg := controllerImage(t, readFile(t, filepath.Join("..", "config", "manager", "manager.yaml")))
	if image != controllers.DefaultImage || arg != controllers.DefaultImage {
		t.Errorf("config/manager runs image %q with --image=%q; want the controller's default %q for both", image, arg, controllers.DefaultImage)
	}
}

// make e2e and make demo load images that hack/images.sh tags latest (the
// cluster has no registry): they must ask the chart for that tag.
func TestLocalClusterInstallsAskForTheLocalImageTag(t *testing.T) {
	for _, f := range []string{"../hack/cluster/e2e/e2e_test.go", "../hack/cluster/demo.sh"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`image\.tag[= "]+latest`).Match(b) {
			t.Errorf("%s installs the chart without image.tag=latest, the tag of hack/images.sh's images", f)
		}
	}
}

// What would make `connscope controller` exit at start (and crash-loop)
// fails helm template instead, naming the value.
func TestValuesOutOfRangeFailTheRender(t *testing.T) {
	needEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "controller.labelBits=200-300"}, `controller.labelBits "200-300" must be FIRST-LAST within 0-127 with FIRST <= LAST`},
		{[]string{"--set", "controller.labelBits=120-128"}, `controller.labelBits "120-128" must be FIRST-LAST within 0-127`},
		{[]string{"--set", "controller.labelBits=31-16"}, `controller.labelBits "31-16" must be FIRST-LAST`},
		{[]string{"--set-string", "controller.labelBits=128"}, `controller.labelBits "128" must be FIRST-LAST within 0-127`},
		{[]string{"--set", "controller.labelBits=0-99999999999999999999"}, `controller.labelBits "0-99999999999999999999" must be`},
		{[]string{"--set", "controller.nflogGroups=1000-70000"}, `controller.nflogGroups "1000-70000" must be FIRST-LAST within 0-65535`},
		{[]string{"--set", "controller.nflogGroups=2000-1000"}, `controller.nflogGroups "2000-1000" must be FIRST-LAST`},
		{[]string{"--set", "controller.agentMetricsPort=65530"}, `controller.agentMetricsPort 65530 with controller.nflogGroups "1000-1015": the agents would use host ports 65530-65545, beyond 65535`},
		{[]string{"--set", "controller.nflogGroups=0-65535", "--set", "controller.agentMetricsPort=1"}, "the agents would use host ports 1-65536"},
	} {
		out, err := run(t, "", nil, helmBin, append([]string{"template", "connscope", chartDir}, tc.args...)...)
		if err == nil {
			t.Errorf("%v: rendered without error", tc.args)
			continue
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("%v: the error does not say %q:\n%s", tc.args, tc.want, out)
		}
	}
	// The edges pass, and reach the controller as given.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--set", "controller.labelBits=0-127", "--set", "controller.nflogGroups=0-65534", "--set", "controller.agentMetricsPort=1"},
			[]string{"--label-bits=0-127", "--nflog-groups=0-65534", "--agent-metrics-port=1"}},
		{[]string{"--set-string", "controller.labelBits=127", "--set-string", "controller.nflogGroups=65535", "--set", "controller.agentMetricsPort=65535"},
			[]string{"--label-bits=127", "--nflog-groups=65535", "--agent-metrics-port=65535"}},
		{[]string{"--set", "controller.labelBits=08-010"}, []string{"--label-bits=08-010"}},
	} {
		out := helmTemplate(t, tc.args...)
		for _, w := range tc.want {
			if !strings.Contains(out, "- "+w+"\n") {
				t.Errorf("%v: the controller's arguments lack %s", tc.args, w)
			}
		}
	}
}

// The chart and config/default install the same objects: names, kinds,
// namespaces, the controller's arguments and pod spec, the RBAC rules.
func TestChartMatchesKustomize(t *testing.T) {
	needEnv(t)
	kobjs := objects(t, mustRun(t, "", nil, kubectl, "kustomize", filepath.Join("..", "config", "default")))
	// Both name the release's image (TestReleaseVersionAgrees).
	hobjs := objects(t, helmTemplate(t))
	if k, h := kindsOf(kobjs), kindsOf(hobjs); !reflect.DeepEqual(k, h) {
		t.Errorf("kustomize makes\n  %s\nthe chart makes\n  %s", strings.Join(k, "\n  "), strings.Join(h, "\n  "))
	}
	for _, o := range kobjs {
		h := find(hobjs, o.GetKind(), o.GetNamespace(), o.GetName())
		if h == nil {
			continue
		}
		for _, field := range [][]string{{"rules"}, {"roleRef"}, {"subjects"}, {"spec", "template", "spec"}, {"spec", "ports"}, {"spec", "versions"}} {
			kv, _, _ := unstructured.NestedFieldNoCopy(o.Object, field...)
			hv, _, _ := unstructured.NestedFieldNoCopy(h.Object, field...)
			if !reflect.DeepEqual(kv, hv) {
				t.Errorf("%s %s/%s .%s differs:\nkustomize: %v\nchart:     %v", o.GetKind(), o.GetNamespace(), o.GetName(), strings.Join(field, "."), kv, hv)
			}
		}
		if o.GetKind() == "Namespace" {
			for k, v := range o.GetLabels() {
				if strings.HasPrefix(k, "pod-security") && h.GetLabels()[k] != v {
					t.Errorf("namespace %s: label %s is %q in kustomize, %q in the chart", o.GetName(), k, v, h.GetLabels()[k])
				}
			}
		}
	}
}

// kubectl kustomize config/default and helm template are accepted by the
// API server (kubectl apply --dry-run=server), and config/default then
// really applies; the samples are valid SamplingPolicies.
func TestManifestsAcceptedByAPIServer(t *testing.T) {
	needEnv(t)
	cl := kustomizeCluster
	kust := mustRun(t, "", nil, kubectl, "kustomize", filepath.Join("..", "config", "default"))
	// A dry run cannot put objects into namespaces that do not exist yet:
	// the namespaces go first, for real.
	var nsDocs []string
	for _, o := range objects(t, kust) {
		if o.GetKind() == "Namespace" {
			b, _ := yaml.Marshal(o.Object)
			nsDocs = append(nsDocs, string(b))
		}
	}
	if len(nsDocs) != 2 {
		t.Fatalf("config/default has %d namespaces, want 2", len(nsDocs))
	}
	mustRun(t, cl.kubeconfig, []byte(strings.Join(nsDocs, "---\n")), kubectl, "apply", "--server-side", "-f", "-")
	mustRun(t, cl.kubeconfig, []byte(kust), kubectl, "apply", "--server-side", "--dry-run=server", "-f", "-")

	// The chart, plain and with every option, also in a dry run (the
	// Prometheus operator's kinds from a stand-in CRD, see testdata).
	mustRun(t, cl.kubeconfig, nil, kubectl, "apply", "--server-side", "-f", filepath.Join("testdata", "monitoring-crds.yaml"))
	mustRun(t, cl.kubeconfig, nil, kubectl, "wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")
	for _, args := range [][]string{
		nil,
		{"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true", "--set", "controller.replicas=3"},
	} {
		out := helmTemplate(t, args...)
		mustRun(t, cl.kubeconfig, []byte(out), kubectl, "apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-")
	}

	// For real: everything is there, the CRD is established, and each
	// sample is a valid policy (the API server applies the CRD's defaults).
	mustRun(t, cl.kubeconfig, []byte(kust), kubectl, "apply", "--server-side", "-f", "-")
	mustRun(t, cl.kubeconfig, nil, kubectl, "wait", "--for=condition=Established", "crd/samplingpolicies.sampling.connscope.dev")
	ctx := context.Background()
	var d appsv1.Deployment
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: "connscope-system", Name: "connscope-controller"}, &d); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != controllers.DefaultImage {
		t.Errorf("controller image %q, want the controller's default %q", img, controllers.DefaultImage)
	}
	samples, err := filepath.Glob(filepath.Join("..", "config", "samples", "sampling_*.yaml"))
	if err != nil || len(samples) < 3 {
		t.Fatalf("samples: %v %v", samples, err)
	}
	for _, s := range samples {
		mustRun(t, cl.kubeconfig, nil, kubectl, "apply", "--server-side", "-f", s)
	}
	var seed samplingv1alpha1.SamplingPolicy
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "default"}, &seed); err != nil {
		t.Fatal(err)
	}
	if seed.Spec.Probability != "0.0001" || seed.Spec.PacketCap != 10 {
		t.Errorf("the seed's policy: probability %q packetCap %d, want 0.0001 and 10", seed.Spec.Probability, seed.Spec.PacketCap)
	}
	var list samplingv1alpha1.SamplingPolicyList
	if err := cl.c.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	sinks := map[string]bool{}
	for _, p := range list.Items {
		sinks[string(p.Spec.Sink.Type)] = true
	}
	for _, s := range []string{"Classifier", "ClickHouse"} {
		if !sinks[s] {
			t.Errorf("no sample policy with sink %s (have %v)", s, sinks)
		}
	}
}

// The chart's generated files equal their sources (hack/gen-chart.sh
// --check runs in make verify-generated; this says the same in go test).
func TestGeneratedFilesUpToDate(t *testing.T) {
	pairs := map[string]string{
		"../config/rbac/role.yaml":                                         "connscope/files/rbac/role.yaml",
		"../config/rbac/metrics_reader_role.yaml":                          "connscope/files/rbac/metrics_reader_role.yaml",
		"../config/crd/bases/sampling.connscope.dev_samplingpolicies.yaml": "connscope/files/crds/sampling.connscope.dev_samplingpolicies.yaml",
	}
	for src, dst := range pairs {
		a, err1 := os.ReadFile(src)
		b, err2 := os.ReadFile(dst)
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s (%v %v): run hack/gen-chart.sh", dst, src, err1, err2)
		}
	}
}

// Every metric the alerts and the dashboard use is one that connscope's
// agent, classifier, controller or controller-runtime really exports.
func TestAlertsAndDashboardUseExportedMetrics(t *testing.T) {
	needEnv(t)
	rendered := helmTemplate(t, "--set", "metrics.prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true")
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b(connscope_[a-z_]*[a-z]|controller_runtime_[a-z_]*[a-z])\b`).FindAllString(rendered, -1) {
		used[m] = true
	}
	if len(used) < 10 {
		t.Fatalf("only %d metric names found in the rendered rules and dashboard", len(used))
	}
	var src bytes.Buffer
	for _, dir := range []string{"../agent", "../classifier", "../controllers"} {
		_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err == nil && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
				b, _ := os.ReadFile(p)
				src.Write(b)
			}
			return nil
		})
	}
	for m := range used {
		if strings.HasPrefix(m, "controller_runtime_") {
			if m != "controller_runtime_reconcile_errors_total" {
				t.Errorf("%s: not a controller-runtime metric the test knows", m)
			}
			continue
		}
		if !strings.Contains(src.String(), `"`+m+`"`) {
			t.Errorf("%s is used by the chart but exported by no agent, classifier or controller code", m)
		}
	}
}

// helm install, upgrade with changed values, and uninstall against a real
// API server; the objects are checked at each step.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	needEnv(t)
	cl := helmCluster
	ctx := context.Background()
	helm := func(args ...string) string {
		t.Helper()
		return mustRun(t, cl.kubeconfig, nil, helmBin, args...)
	}
	mustRun(t, cl.kubeconfig, nil, kubectl, "apply", "--server-side", "-f", filepath.Join("testdata", "monitoring-crds.yaml"))
	mustRun(t, cl.kubeconfig, nil, kubectl, "wait", "--for=condition=Established", "crd/prometheusrules.monitoring.coreos.com", "crd/servicemonitors.monitoring.coreos.com", "crd/podmonitors.monitoring.coreos.com")

	notes := helm("install", "connscope", chartDir, "--namespace", "default")
	if !strings.Contains(notes, "kind: SamplingPolicy") || !strings.Contains(notes, "kubectl get samplingpolicies") {
		t.Errorf("NOTES do not tell what to do next:\n%s", notes)
	}

	// Namespaces with their pod-security levels.
	for ns, level := range map[string]string{"connscope-system": "restricted", "connscope-agents": "privileged"} {
		var n corev1.Namespace
		if err := cl.c.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
			t.Fatal(err)
		}
		if n.Labels["pod-security.kubernetes.io/enforce"] != level {
			t.Errorf("namespace %s: enforce %q, want %q", ns, n.Labels["pod-security.kubernetes.io/enforce"], level)
		}
	}
	// The CRD, kept on uninstall.
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "samplingpolicies.sampling.connscope.dev"}, crd); err != nil {
		t.Fatal(err)
	}
	if crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("CRD annotations %v: no helm.sh/resource-policy: keep", crd.GetAnnotations())
	}
	// RBAC: the generated rules exactly.
	want := objects(t, readFile(t, "../config/rbac/role.yaml"))
	for _, w := range want {
		var rules []rbacv1.PolicyRule
		switch w.GetKind() {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := cl.c.Get(ctx, client.ObjectKey{Name: w.GetName()}, &r); err != nil {
				t.Fatal(err)
			}
			rules = r.Rules
		case "Role":
			var r rbacv1.Role
			if err := cl.c.Get(ctx, client.ObjectKey{Namespace: w.GetNamespace(), Name: w.GetName()}, &r); err != nil {
				t.Fatal(err)
			}
			rules = r.Rules
		}
		var wr struct {
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		b, _ := yaml.Marshal(w.Object)
		_ = yaml.Unmarshal(b, &wr)
		if !reflect.DeepEqual(rules, wr.Rules) {
			t.Errorf("%s %s/%s: rules\n%v\nwant config/rbac's\n%v", w.GetKind(), w.GetNamespace(), w.GetName(), rules, wr.Rules)
		}
	}
	d := deployment(t, cl)
	if *d.Spec.Replicas != 2 || !hasArg(d, "--leader-elect") || !hasArg(d, "--image=connscope/connscope:"+appVersion(t)) || !hasArg(d, "--label-bits=16-31") {
		t.Errorf("controller after install: replicas %d args %q", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Args)
	}
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: "connscope-system", Name: "connscope"}, prometheusRule()); !apierrors.IsNotFound(err) {
		t.Errorf("a PrometheusRule without metrics.prometheusRule.enabled: %v", err)
	}
	// The controller's pod passes its namespace's pod security (the API
	// server admits it; nothing runs it here).
	admitPod(t, cl, "connscope-system", "controller-from-helm", d.Spec.Template)

	// Upgrade with changed values.
	helm("upgrade", "connscope", chartDir, "--namespace", "default",
		"--set", "controller.replicas=3", "--set", "controller.labelBits=20-27", "--set", "image.tag=v0.2.0",
		"--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
		"--set", "grafanaDashboard.enabled=true", "--set", "controller.logLevel=debug")
	d = deployment(t, cl)
	if *d.Spec.Replicas != 3 || !hasArg(d, "--label-bits=20-27") || !hasArg(d, "--image=connscope/connscope:v0.2.0") ||
		!hasArg(d, "--zap-log-level=debug") || d.Spec.Template.Spec.Containers[0].Image != "connscope/connscope:v0.2.0" {
		t.Errorf("controller after upgrade: replicas %d image %s args %q", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image, d.Spec.Template.Spec.Containers[0].Args)
	}
	pr := prometheusRule()
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: "connscope-system", Name: "connscope"}, pr); err != nil {
		t.Fatalf("PrometheusRule after upgrade: %v", err)
	}
	alerts := map[string]bool{}
	groups, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups")
	for _, g := range groups {
		rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
		for _, r := range rules {
			alerts[r.(map[string]any)["alert"].(string)] = true
		}
	}
	for _, a := range []string{"ConnscopeAgentLosingPackets", "ConnscopeAgentNotReady", "ConnscopePolicyReconcileErrors"} {
		if !alerts[a] {
			t.Errorf("PrometheusRule lacks alert %s (has %v)", a, alerts)
		}
	}
	var cm corev1.ConfigMap
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: "connscope-system", Name: "connscope-dashboard"}, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Labels["grafana_dashboard"] != "1" || !strings.Contains(cm.Data["connscope.json"], `"uid": "connscope"`) {
		t.Errorf("dashboard ConfigMap: labels %v, %d bytes of JSON", cm.Labels, len(cm.Data["connscope.json"]))
	}

	// A policy, so that uninstall has something to keep.
	mustRun(t, cl.kubeconfig, nil, kubectl, "apply", "--server-side", "-f", "../config/samples/sampling_v1alpha1_samplingpolicy.yaml")

	helm("uninstall", "connscope", "--namespace", "default")
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: "connscope-system", Name: "connscope-controller"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("the controller after uninstall: %v", err)
	}
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "connscope-controller"}, &rbacv1.ClusterRole{}); !apierrors.IsNotFound(err) {
		t.Errorf("the ClusterRole after uninstall: %v", err)
	}
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "samplingpolicies.sampling.connscope.dev"}, crd); err != nil || crd.GetDeletionTimestamp() != nil {
		t.Errorf("the CRD after uninstall (kept by default): %v, deleting %v", err, crd.GetDeletionTimestamp())
	}
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "default"}, &samplingv1alpha1.SamplingPolicy{}); err != nil {
		t.Errorf("the policy after uninstall (kept with its CRD): %v", err)
	}
	for _, ns := range []string{"connscope-system", "connscope-agents"} {
		var n corev1.Namespace
		if err := cl.c.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil || n.DeletionTimestamp != nil {
			t.Errorf("namespace %s after uninstall (kept by default): %v", ns, err)
		}
	}

	// Opting out: crds.keep=false, set by an upgrade before uninstalling.
	// (The kept CRD and namespaces still carry the release's annotations,
	// so a new install of the same release adopts them.)
	helm("install", "connscope", chartDir, "--namespace", "default")
	helm("upgrade", "connscope", chartDir, "--namespace", "default", "--set", "crds.keep=false")
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "samplingpolicies.sampling.connscope.dev"}, crd); err != nil {
		t.Fatal(err)
	}
	if _, ok := crd.GetAnnotations()["helm.sh/resource-policy"]; ok {
		t.Errorf("crds.keep=false: the CRD still has helm.sh/resource-policy")
	}
	helm("uninstall", "connscope", "--namespace", "default")
	err := cl.c.Get(ctx, client.ObjectKey{Name: "samplingpolicies.sampling.connscope.dev"}, crd)
	if err == nil && crd.GetDeletionTimestamp() == nil {
		t.Errorf("crds.keep=false: the CRD survived uninstall")
	} else if err != nil && !apierrors.IsNotFound(err) {
		t.Error(err)
	}
}

func prometheusRule() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"})
	return u
}

func deployment(t *testing.T, cl *cluster) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	if err := cl.c.Get(context.Background(), client.ObjectKey{Namespace: "connscope-system", Name: "connscope-controller"}, &d); err != nil {
		t.Fatal(err)
	}
	return &d
}

func hasArg(d *appsv1.Deployment, arg string) bool {
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		if a == arg {
			return true
		}
	}
	return false
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// createPod creates a Pod from a pod template in a namespace: the API
// server's pod-security admission admits or rejects it by the namespace's
// labels. It returns the error of the create; admitPod wants none.
func createPod(cl *cluster, namespace, name string, tpl corev1.PodTemplateSpec) error {
	pod := &corev1.Pod{Spec: *tpl.Spec.DeepCopy()}
	pod.Name = name
	pod.Namespace = namespace
	pod.Labels = tpl.Labels
	pod.Annotations = tpl.Annotations
	return cl.c.Create(context.Background(), pod)
}

func admitPod(t *testing.T, cl *cluster, namespace, name string, tpl corev1.PodTemplateSpec) {
	t.Helper()
	if err := createPod(cl, namespace, name, tpl); err != nil {
		t.Errorf("pod %s/%s from its template was not admitted: %v", namespace, name, err)
	}
}

// Pod security: every pod connscope runs passes the level its namespace
// enforces, as the API server judges it: the controller's (from
// config/default), and the agents' and classifiers' that the controller
// renders for each sample policy (read back from the API server, defaults
// applied). An agent pod in the restricted namespace is refused, which
// shows the admission is on.
func TestPodsPassPodSecurity(t *testing.T) {
	needEnv(t)
	cl := kustomizeCluster
	ctx := context.Background()
	// config/default and the samples, applied (idempotent if the test
	// above ran first).
	kust := mustRun(t, "", nil, kubectl, "kustomize", filepath.Join("..", "config", "default"))
	mustRun(t, cl.kubeconfig, []byte(kust), kubectl, "apply", "--server-side", "-f", "-")
	mustRun(t, cl.kubeconfig, nil, kubectl, "wait", "--for=condition=Established", "crd/samplingpolicies.sampling.connscope.dev")
	samples, err := filepath.Glob(filepath.Join("..", "config", "samples", "sampling_*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		mustRun(t, cl.kubeconfig, nil, kubectl, "apply", "--server-side", "-f", s)
	}

	var ns corev1.Namespace
	if err := cl.c.Get(ctx, client.ObjectKey{Name: "connscope-system"}, &ns); err != nil || ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Fatalf("connscope-system: %v labels %v", err, ns.Labels)
	}
	var d appsv1.Deployment
	if err := cl.c.Get(ctx, client.ObjectKey{Namespace: "connscope-system", Name: "connscope-controller"}, &d); err != nil {
		t.Fatal(err)
	}
	admitPod(t, cl, "connscope-system", "controller-from-kustomize", d.Spec.Template)

	opts := controllers.DefaultOptions()
	var list samplingv1alpha1.SamplingPolicyList
	if err := cl.c.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) < 3 {
		t.Fatalf("%d policies, want the 3 samples", len(list.Items))
	}
	for i := range list.Items {
		p := &list.Items[i]
		// The ServiceAccounts the pods name must exist.
		for _, sa := range []client.Object{controllers.AgentServiceAccount(p, opts), controllers.ClassifierServiceAccount(p, opts)} {
			if err := cl.c.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
		ds := controllers.AgentDaemonSet(p, controllers.Allocation{LabelBit: 16 + int32(i), NFLOGGroup: 1000 + int32(i)}, "hash", opts)
		if ds.Namespace != "connscope-agents" {
			t.Errorf("agents of %s in %s", p.Name, ds.Namespace)
		}
		admitPod(t, cl, ds.Namespace, "agent-"+p.Name, ds.Spec.Template)
		dep := controllers.ClassifierDeployment(p, "hash", opts)
		if dep.Namespace != "connscope-system" {
			t.Errorf("classifier of %s in %s", p.Name, dep.Namespace)
		}
		admitPod(t, cl, dep.Namespace, "classifier-"+p.Name, dep.Spec.Template)

		// The agent needs the privileged level: restricted refuses it.
		sa := controllers.AgentServiceAccount(p, opts)
		sa.Namespace = "connscope-system"
		if err := cl.c.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		err := createPod(cl, "connscope-system", "agent-in-restricted-"+p.Name, ds.Spec.Template)
		if err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted:latest"`) {
			t.Errorf("an agent pod in the restricted namespace: %v, want a PodSecurity refusal", err)
		}
	}
}
