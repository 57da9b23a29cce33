package controllers

import (
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/connscope/connscope/agent"
	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the builders' output")

// goldenPolicy is a policy as the API server returns it after defaulting.
func goldenPolicy() *samplingv1alpha1.SamplingPolicy {
	return &samplingv1alpha1.SamplingPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "edge", UID: "0b7c5d2e-1111-4222-8333-444455556666", Generation: 1},
		Spec: samplingv1alpha1.SamplingPolicySpec{
			Probability:   "0.0001",
			PacketCap:     10,
			IdleTimeout:   &metav1.Duration{Duration: 3 * time.Second},
			NodeSelector:  map[string]string{"node-role.kubernetes.io/edge": ""},
			Tolerations:   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			ServerPorts:   []int32{80, 443},
			ExcludedCIDRs: []string{"10.0.0.0/8", "fd00::/8"},
			Interfaces:    []string{"eth0", "ens+"},
			IPFamilies:    []samplingv1alpha1.IPFamily{samplingv1alpha1.IPv4, samplingv1alpha1.IPv6},
			Sink: samplingv1alpha1.SinkSpec{
				Type: samplingv1alpha1.SinkClassifier,
				Classifier: samplingv1alpha1.ClassifierSpec{
					Storage: &samplingv1alpha1.StorageSpec{Size: resource.MustParse("10Gi"), StorageClassName: ptr.To("standard")},
					GeoIP:   &samplingv1alpha1.GeoIPSpec{ClaimName: "geoip"},
				},
			},
		},
	}
}

var goldenAlloc = Allocation{LabelBit: 17, NFLOGGroup: 1001}

// checkGolden compares obj, as server-side apply sends it (YAML), with
// testdata/name.golden.
func checkGolden(t *testing.T, name string, obj client.Object) {
	t.Helper()
	u, err := ToApplyObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	got, err := yaml.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controllers -run Golden -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s (rerun with -update if the change is intended):\n%s", name, path, lineDiff(string(want), string(got)))
	}
}

// lineDiff shows the first lines that differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			fmt.Fprintf(&b, "line %d:\n- %s\n+ %s\n", i+1, a, c)
			if b.Len() > 2000 {
				break
			}
		}
	}
	return b.String()
}

// agentConfigMap is the agent's settings for p and the ConfigMap holding
// them, with its hash.
func agentConfigMap(t *testing.T, p *samplingv1alpha1.SamplingPolicy, opts Options) (agent.Config, *corev1.ConfigMap, string) {
	t.Helper()
	cfg, err := AgentConfig(p, goldenAlloc, opts)
	if err != nil {
		t.Fatal(err)
	}
	cm, hash, err := AgentConfigMap(p, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, cm, hash
}

func TestGoldenAgentObjects(t *testing.T) {
	p, opts := goldenPolicy(), DefaultOptions()
	_, cm, hash := agentConfigMap(t, p, opts)
	checkGolden(t, "agent-configmap", cm)
	checkGolden(t, "agent-daemonset", AgentDaemonSet(p, goldenAlloc, hash, opts))
	checkGolden(t, "agent-serviceaccount", AgentServiceAccount(p, opts))
}

func TestGoldenClassifierObjects(t *testing.T) {
	p, opts := goldenPolicy(), DefaultOptions()
	checkGolden(t, "classifier-deployment", ClassifierDeployment(p, IngestTokenHash("golden-token"), opts))
	checkGolden(t, "classifier-service", ClassifierService(p, opts))
	checkGolden(t, "classifier-pvc", ClassifierVolumeClaim(p, opts))
	checkGolden(t, "ingest-token-secret", IngestSecret(p, opts.AgentNamespace, IngestTokenName(p.Name), map[string][]byte{IngestTokenKey: []byte("golden-token"), IngestCACertKey: []byte("golden-ca")}))

	ch := goldenPolicy()
	ch.Spec.Sink = samplingv1alpha1.SinkSpec{
		Type:       samplingv1alpha1.SinkClickHouse,
		Classifier: samplingv1alpha1.ClassifierSpec{Replicas: ptr.To[int32](3), Image: "registry.example/connscope:v1"},
		ClickHouse: &samplingv1alpha1.ClickHouseSpec{
			Address: "clickhouse.db.svc:8123", Database: "radar",
			CredentialsSecret: &samplingv1alpha1.SecretKeysRef{Name: "clickhouse", UsernameKey: "user", PasswordKey: "pass"},
		},
	}
	checkGolden(t, "classifier-deployment-clickhouse", ClassifierDeployment(ch, IngestTokenHash("golden-token"), opts))
	if ClassifierVolumeClaim(ch, opts) != nil {
		t.Error("a ClickHouse sink got a volume claim for the embedded store")
	}
	// At scale the agents insert into ClickHouse themselves, with no
	// ingest token.
	cfg, err := AgentConfig(ch, goldenAlloc, opts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sink != "clickhouse://clickhouse.db.svc:8123/radar" || cfg.SinkTokenFile != "" {
		t.Errorf("agent sink with ClickHouse: %q, token file %q", cfg.Sink, cfg.SinkTokenFile)
	}
	// and with the policy's ClickHouse credentials, from the Secret of the
	// same name in their own namespace.
	env := map[string]string{}
	for _, e := range AgentDaemonSet(ch, goldenAlloc, "h", opts).Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			env[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		}
	}
	if env["CONNSCOPE_CLICKHOUSE_USERNAME"] != "clickhouse/user" || env["CONNSCOPE_CLICKHOUSE_PASSWORD"] != "clickhouse/pass" {
		t.Errorf("agent credentials with ClickHouse: %v", env)
	}
	for _, e := range AgentDaemonSet(goldenPolicy(), goldenAlloc, "h", opts).Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
			t.Errorf("agent env without ClickHouse: %s is not from the pod's fields (NODE_NAME, HOST_IP only)", e.Name)
		}
	}
}

// With spec.sink.clickhouse.tls the agents and the classifier speak HTTPS
// to ClickHouse, trusting the CA of the policy's caSecret, mounted in both
// pods from the Secret of that name in their own namespace.
func TestClickHouseOverTLS(t *testing.T) {
	opts := DefaultOptions()
	ch := goldenPolicy()
	ch.Spec.Sink = samplingv1alpha1.SinkSpec{
		Type: samplingv1alpha1.SinkClickHouse,
		ClickHouse: &samplingv1alpha1.ClickHouseSpec{
			Address: "clickhouse.db.svc:8443", Database: "radar",
			TLS: &samplingv1alpha1.ClickHouseTLS{CASecret: &samplingv1alpha1.SecretKeyRef{Name: "clickhouse-ca", Key: "ca.pem"}},
		},
	}
	cfg, err := AgentConfig(ch, goldenAlloc, opts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sink != "clickhouses://clickhouse.db.svc:8443/radar" || cfg.SinkCAFile != ClickHouseCAPath {
		t.Errorf("agent sink with ClickHouse over TLS: %q, CA file %q", cfg.Sink, cfg.SinkCAFile)
	}
	mounted := func(spec corev1.PodSpec) string {
		for _, v := range spec.Volumes {
			if v.Secret == nil || v.Secret.SecretName != "clickhouse-ca" {
				continue
			}
			if v.Secret.Optional == nil || !*v.Secret.Optional {
				t.Errorf("the ClickHouse CA volume is not optional: a missing Secret would hold the pod in ContainerCreating")
			}
			for _, m := range spec.Containers[0].VolumeMounts {
				if m.Name == v.Name && len(v.Secret.Items) == 1 {
					return m.MountPath + "/" + v.Secret.Items[0].Path + " from key " + v.Secret.Items[0].Key
				}
			}
		}
		return ""
	}
	want := ClickHouseCAPath + " from key ca.pem"
	if got := mounted(AgentDaemonSet(ch, goldenAlloc, "h", opts).Spec.Template.Spec); got != want {
		t.Errorf("agent's ClickHouse CA: %q, want %q", got, want)
	}
	d := ClassifierDeployment(ch, IngestTokenHash("golden-token"), opts).Spec.Template.Spec
	if got := mounted(d); got != want {
		t.Errorf("classifier's ClickHouse CA: %q, want %q", got, want)
	}
	args := strings.Join(d.Containers[0].Args, " ")
	if !strings.Contains(args, "--store=clickhouses://clickhouse.db.svc:8443/radar") || !strings.Contains(args, "--store-ca-file="+ClickHouseCAPath) {
		t.Errorf("classifier args: %s", args)
	}

	// tls: {} trusts the system's roots: HTTPS, no CA mounted.
	ch.Spec.Sink.ClickHouse.TLS = &samplingv1alpha1.ClickHouseTLS{}
	if cfg, err = AgentConfig(ch, goldenAlloc, opts); err != nil || cfg.Sink != "clickhouses://clickhouse.db.svc:8443/radar" || cfg.SinkCAFile != "" {
		t.Errorf("agent with tls: {}: %q, CA file %q, %v", cfg.Sink, cfg.SinkCAFile, err)
	}
	if got := mounted(AgentDaemonSet(ch, goldenAlloc, "h", opts).Spec.Template.Spec); got != "" {
		t.Errorf("agent with tls: {} mounts %s", got)
	}
	if args := strings.Join(ClassifierDeployment(ch, IngestTokenHash("golden-token"), opts).Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--store-ca-file") {
		t.Errorf("classifier with tls: {}: %s", args)
	}
}

// The ConfigMap holds exactly what the agent reads back: the agent's own
// parser and checks accept it.
func TestAgentConfigRoundTripsThroughAgentParser(t *testing.T) {
	p, opts := goldenPolicy(), DefaultOptions()
	_, cm, _ := agentConfigMap(t, p, opts)
	back, err := agent.ParseConfig([]byte(cm.Data[agentConfigFile]))
	if err != nil {
		t.Fatalf("the agent cannot read its ConfigMap: %v", err)
	}
	if err := back.Validate(); err != nil {
		t.Fatalf("the agent refuses its ConfigMap: %v", err)
	}
	if back.Probability != 0.0001 || back.LabelBit != 17 || back.NFLOGGroup != 1001 || back.PacketCap != 10 ||
		back.Sink != "grpcs://connscope-edge-classifier.connscope-system.svc:9443" || back.SinkCAFile != IngestCAPath || back.MetricsAddr != ":9478" {
		t.Errorf("settings read back: %+v", back)
	}
}

// The agent's /metrics and probes listen on the node's address only, not
// on every interface of the host: its arguments, once the kubelet has put
// the node's address (status.hostIP) in $(HOST_IP), and read by the
// agent's own flag parser over its ConfigMap, name that address and the
// container's metrics port, for IPv4 and IPv6 nodes.
func TestAgentMetricsListenOnTheNodeAddress(t *testing.T) {
	p, opts := goldenPolicy(), DefaultOptions()
	cfg, cm, _ := agentConfigMap(t, p, opts)
	file := filepath.Join(t.TempDir(), agentConfigFile)
	if err := os.WriteFile(file, []byte(cm.Data[agentConfigFile]), 0o600); err != nil {
		t.Fatal(err)
	}
	c := AgentDaemonSet(p, goldenAlloc, "h", opts).Spec.Template.Spec.Containers[0]
	var fromHostIP bool
	for _, e := range c.Env {
		fromHostIP = fromHostIP || (e.Name == hostIPEnv && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP")
	}
	if !fromHostIP {
		t.Fatalf("no %s from status.hostIP in the agent's env: %v", hostIPEnv, c.Env)
	}
	for _, nodeIP := range []string{"10.0.0.7", "fd00::7"} {
		var args []string
		for _, a := range c.Args[1:] { // after the subcommand
			a = strings.ReplaceAll(a, "$("+hostIPEnv+")", nodeIP) // the kubelet's expansion
			if strings.HasPrefix(a, "--config=") {
				a = "--config=" + file
			}
			args = append(args, a)
		}
		base := agent.DefaultConfig()
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		base.AddFlags(fs)
		fs.Bool("log-json", false, "")
		if err := fs.Parse(args); err != nil {
			t.Fatalf("%s: the agent's flags refuse %q: %v", nodeIP, args, err)
		}
		got, err := base.Resolve(fs)
		if err == nil {
			err = got.Validate()
		}
		if err != nil {
			t.Fatalf("%s: %v", nodeIP, err)
		}
		host, port, err := net.SplitHostPort(got.MetricsAddr)
		if err != nil || host != nodeIP || port != fmt.Sprint(c.Ports[0].ContainerPort) {
			t.Errorf("%s: the agent listens on %q (%v), want the node's address and port %d", nodeIP, got.MetricsAddr, err, c.Ports[0].ContainerPort)
		}
		if got.Sink != cfg.Sink || got.NFLOGGroup != cfg.NFLOGGroup {
			t.Errorf("%s: the ConfigMap's other settings were not kept: %+v", nodeIP, got)
		}
	}
}

func TestAgentConfigRefusesWhatTheAgentRefuses(t *testing.T) {
	p := goldenPolicy()
	p.Spec.Probability = "0.0000000001" // below the kernel's 2^-32
	if _, err := AgentConfig(p, goldenAlloc, DefaultOptions()); err == nil || !strings.Contains(err.Error(), "rounds to 0 in the kernel's 31-bit fixed point") {
		t.Errorf("got %v, want the agent's error that it rounds to 0", err)
	}
}

// Two policies on one node share its network: their agents' ports differ.
func TestAgentMetricsPortsDifferAcrossGroups(t *testing.T) {
	opts := DefaultOptions()
	a := AgentMetricsPort(opts, Allocation{NFLOGGroup: opts.NFLOGGroups.Min})
	b := AgentMetricsPort(opts, Allocation{NFLOGGroup: opts.NFLOGGroups.Min + 1})
	if a != DefaultAgentMetricsPort || b != a+1 {
		t.Errorf("ports %d, %d", a, b)
	}
}

// What server-side apply gets carries no status and no nulls.
func TestToApplyObjectDropsStatusAndNulls(t *testing.T) {
	ds := AgentDaemonSet(goldenPolicy(), goldenAlloc, "h", DefaultOptions())
	u, err := ToApplyObject(client.Object(ds))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := yaml.Marshal(u.Object)
	for _, bad := range []string{"null", "status:"} {
		if strings.Contains(string(b), bad) {
			t.Errorf("apply object holds %q:\n%s", bad, b)
		}
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Range
		ok   bool
	}{
		{"16-31", Range{16, 31}, true},
		{"7", Range{7, 7}, true},
		{"31-16", Range{}, false},
		{"0-128", Range{}, false},
		{"a-b", Range{}, false},
	} {
		got, err := ParseRange(tc.in, 0, 127)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRange(%q) = %v, %v", tc.in, got, err)
		}
	}
}

// Tokens are 32 random bytes, base64url: one word the classifier accepts,
// a new one each time.
func TestNewIngestToken(t *testing.T) {
	a, err := NewIngestToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewIngestToken()
	if len(a) != 43 || !validIngestToken(a) || a == b {
		t.Errorf("tokens %q, %q", a, b)
	}
	if IngestTokenHash(a) == IngestTokenHash(b) || strings.Contains(IngestTokenHash(a), a[:8]) {
		t.Errorf("hashes %s, %s", IngestTokenHash(a), IngestTokenHash(b))
	}
}

// The controller's cache holds Secrets only in its two namespaces and only
// connscope's (by label): it watches its ingest tokens, not every Secret
// it could read.
func TestCacheWatchesOnlyConnscopeSecrets(t *testing.T) {
	opts := DefaultOptions()
	for obj, by := range CacheOptions(opts).ByObject {
		if _, ok := obj.(*corev1.Secret); !ok {
			continue
		}
		if by.Label == nil || by.Label.String() != LabelName+"=connscope" {
			t.Errorf("Secrets cached with label selector %v", by.Label)
		}
		if len(by.Namespaces) != 2 {
			t.Errorf("Secrets cached in %v", by.Namespaces)
		}
		for ns := range by.Namespaces {
			if ns != opts.AgentNamespace && ns != opts.ClassifierNamespace {
				t.Errorf("Secrets cached in namespace %q", ns)
			}
		}
		return
	}
	t.Error("no cache settings for Secrets: every Secret of the two namespaces would be cached")
}
