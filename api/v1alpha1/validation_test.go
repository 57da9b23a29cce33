package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/internal/envtestsuite"
)

// These tests send SamplingPolicies to a real kube-apiserver (envtest)
// with the generated CRD installed: the API server itself must refuse
// every bad input with the message the CRD's rules give.

var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(envtestsuite.Run(m, "the validation tests", filepath.Join("..", "..", "config", "crd", "bases"), func(cfg *rest.Config) error {
		scheme := runtime.NewScheme()
		_ = samplingv1alpha1.AddToScheme(scheme)
		var err error
		k8s, err = client.New(cfg, client.Options{Scheme: scheme})
		return err
	}))
}

// policy is a valid policy as a user writes it, as a map so that a test
// can write any value (0, wrong types) that a typed client would drop.
func policy(name string) map[string]any {
	return map[string]any{
		"apiVersion": "sampling.connscope.dev/v1alpha1",
		"kind":       "SamplingPolicy",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"probability": "0.0001",
		},
	}
}

// set sets a dotted path ("spec.sink.type") in obj.
func set(obj map[string]any, path string, v any) {
	parts := strings.Split(path, ".")
	m := obj
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
}

func create(t *testing.T, obj map[string]any) error {
	t.Helper()
	u := &unstructured.Unstructured{Object: obj}
	err := k8s.Create(context.Background(), u)
	if err == nil {
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), u) })
	}
	return err
}

func strs(n int, f func(i int) string) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

func TestValidationRefusesBadInputWithItsMessage(t *testing.T) {
	envtestsuite.NeedEnv(t)
	long := strings.Repeat("a", 513)
	for i, tc := range []struct {
		name string
		edit func(o map[string]any)
		want string
		// path, when set, is the field the API server's message must
		// name ("spec.nodeSelector: Invalid value: ...").
		path string
	}{
		// name
		{"name with a dot", func(o map[string]any) { set(o, "metadata.name", "edge.eu") }, "the name of a SamplingPolicy (metadata.name) must be 1 to 40 lower-case letters", "metadata"},
		{"name starting with a digit", func(o map[string]any) { set(o, "metadata.name", "1edge") }, "starting with a letter", "metadata"},
		{"name of 41 characters", func(o map[string]any) { set(o, "metadata.name", "a"+strings.Repeat("b", 40)) }, "must be 1 to 40", ""},
		// probability
		{"probability missing", func(o map[string]any) { delete(o["spec"].(map[string]any), "probability") }, `spec.probability: Required value`, ""},
		{"probability not a number", func(o map[string]any) { set(o, "spec.probability", "often") }, `probability must be a decimal number such as "0.0001"`, ""},
		{"probability in exponent form", func(o map[string]any) { set(o, "spec.probability", "1e-4") }, `probability must be a decimal number`, ""},
		{"probability with 10 decimals", func(o map[string]any) { set(o, "spec.probability", "0.0000000001") }, `at most 9 digits after the point`, ""},
		{"probability too long", func(o map[string]any) { set(o, "spec.probability", "0."+strings.Repeat("0", 18)+"1") }, `Too long`, ""},
		{"probability zero", func(o map[string]any) { set(o, "spec.probability", "0") }, "probability must be greater than 0 and at most 1", ""},
		{"probability 0.000", func(o map[string]any) { set(o, "spec.probability", "0.000") }, "probability must be greater than 0 and at most 1", ""},
		{"probability above 1", func(o map[string]any) { set(o, "spec.probability", "1.5") }, "probability must be greater than 0 and at most 1", ""},
		{"probability as a number", func(o map[string]any) { set(o, "spec.probability", 0.5) }, `spec.probability: Invalid value: "number"`, ""},
		// packetCap
		{"packetCap 0", func(o map[string]any) { set(o, "spec.packetCap", 0) }, "packetCap must be between 1 and 64 packets per connection", ""},
		{"packetCap 65", func(o map[string]any) { set(o, "spec.packetCap", 65) }, "packetCap must be between 1 and 64", ""},
		// idleTimeout
		{"idleTimeout not a duration", func(o map[string]any) { set(o, "spec.idleTimeout", "soon") }, "idleTimeout must be a duration between 1s and 10m", ""},
		{"idleTimeout without unit", func(o map[string]any) { set(o, "spec.idleTimeout", "3") }, "idleTimeout must be a duration", ""},
		{"idleTimeout too short", func(o map[string]any) { set(o, "spec.idleTimeout", "500ms") }, "idleTimeout must be a duration between 1s and 10m", ""},
		{"idleTimeout too long", func(o map[string]any) { set(o, "spec.idleTimeout", "11m") }, "idleTimeout must be a duration between 1s and 10m", ""},
		// nodeSelector: what a DaemonSet would refuse
		{"nodeSelector key with a space and a '!'", func(o map[string]any) { set(o, "spec.nodeSelector", map[string]any{"bad key!": "x"}) }, "nodeSelector keys must be label keys", "spec.nodeSelector"},
		{"nodeSelector key with two slashes", func(o map[string]any) { set(o, "spec.nodeSelector", map[string]any{"a/b/c": "x"}) }, "nodeSelector keys must be label keys", "spec.nodeSelector"},
		{"nodeSelector key prefix of 254 characters", func(o map[string]any) {
			set(o, "spec.nodeSelector", map[string]any{strings.Repeat("a", 254) + "/pool": "x"})
		}, "an optional DNS prefix of at most 253 characters", "spec.nodeSelector"},
		{"nodeSelector key name of 64 characters", func(o map[string]any) { set(o, "spec.nodeSelector", map[string]any{strings.Repeat("a", 64): "x"}) }, "nodeSelector keys must be label keys", "spec.nodeSelector"},
		{"nodeSelector value with a space", func(o map[string]any) { set(o, "spec.nodeSelector", map[string]any{"pool": "x y"}) }, "should match '^([A-Za-z0-9]", "spec.nodeSelector.pool"},
		{"nodeSelector value of 64 characters", func(o map[string]any) { set(o, "spec.nodeSelector", map[string]any{"pool": strings.Repeat("a", 64)}) }, "Too long: may not be more than 63", "spec.nodeSelector.pool"},
		{"65 nodeSelector entries", func(o map[string]any) {
			m := map[string]any{}
			for i := range 65 {
				m[fmt.Sprintf("k%d", i)] = "v"
			}
			set(o, "spec.nodeSelector", m)
		}, "must have at most 64 items", "spec.nodeSelector"},
		// tolerations: what a DaemonSet would refuse
		{"toleration Exists with a value", func(o map[string]any) {
			set(o, "spec.tolerations", []any{map[string]any{"operator": "Exists", "value": "x"}})
		}, "a toleration with operator Exists matches every value of its key", "spec.tolerations"},
		{"toleration without key and operator Equal", func(o map[string]any) {
			set(o, "spec.tolerations", []any{map[string]any{"operator": "Equal", "value": "x"}})
		}, "a toleration without a key must have operator Exists", "spec.tolerations"},
		{"toleration without key or operator", func(o map[string]any) {
			set(o, "spec.tolerations", []any{map[string]any{"effect": "NoSchedule"}})
		}, "a toleration without a key must have operator Exists", "spec.tolerations"},
		{"toleration with an unknown effect", func(o map[string]any) {
			set(o, "spec.tolerations", []any{map[string]any{"operator": "Exists", "effect": "NoRun"}})
		}, "a toleration's effect must be NoSchedule, PreferNoSchedule or NoExecute", "spec.tolerations"},
		{"tolerationSeconds without NoExecute", func(o map[string]any) {
			set(o, "spec.tolerations", []any{map[string]any{"key": "a", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}})
		}, "a toleration with tolerationSeconds must have effect NoExecute", "spec.tolerations"},
		{"toleration with an unknown operator", func(o map[string]any) {
			set(o, "spec.tolerations", []any{map[string]any{"key": "a", "operator": "Contains", "value": "x"}})
		}, "a toleration's operator must be Exists or Equal", "spec.tolerations"},
		{"65 tolerations", func(o map[string]any) {
			var ts []any
			for i := range 65 {
				ts = append(ts, map[string]any{"key": fmt.Sprintf("k%d", i), "operator": "Exists"})
			}
			set(o, "spec.tolerations", ts)
		}, "must have at most 64 items", "spec.tolerations"},
		// resources: requests above limits
		{"agent cpu request above its limit", func(o map[string]any) {
			set(o, "spec.agent.resources", map[string]any{"requests": map[string]any{"cpu": "2"}, "limits": map[string]any{"cpu": "1"}})
		}, "agent.resources: a request (cpu, memory, ephemeral-storage) may not be greater than its limit", "spec.agent.resources"},
		{"agent memory request above its limit in other units", func(o map[string]any) {
			set(o, "spec.agent.resources", map[string]any{"requests": map[string]any{"memory": "2G"}, "limits": map[string]any{"memory": "1Gi"}})
		}, "agent.resources: a request", "spec.agent.resources"},
		{"agent ephemeral-storage request above its limit, cpu as a number", func(o map[string]any) {
			set(o, "spec.agent.resources", map[string]any{
				"requests": map[string]any{"cpu": 1, "ephemeral-storage": "2Gi"},
				"limits":   map[string]any{"cpu": 1, "ephemeral-storage": "1Gi"},
			})
		}, "agent.resources: a request", "spec.agent.resources"},
		{"classifier memory request above its limit", func(o map[string]any) {
			set(o, "spec.sink.classifier.resources", map[string]any{"requests": map[string]any{"memory": "512Mi"}, "limits": map[string]any{"memory": "256Mi"}})
		}, "classifier.resources: a request (cpu, memory, ephemeral-storage) may not be greater than its limit", "spec.sink.classifier.resources"},
		// serverPorts
		{"server port 0", func(o map[string]any) { set(o, "spec.serverPorts", []any{0}) }, "serverPorts must be TCP ports between 1 and 65535", ""},
		{"server port 65536", func(o map[string]any) { set(o, "spec.serverPorts", []any{443, 65536}) }, "serverPorts must be TCP ports between 1 and 65535", ""},
		{"server port twice", func(o map[string]any) { set(o, "spec.serverPorts", []any{443, 443}) }, "spec.serverPorts[1]: Duplicate value: 443", ""},
		{"16 server ports", func(o map[string]any) {
			set(o, "spec.serverPorts", func() []any {
				out := []any{}
				for p := 1; p <= 16; p++ {
					out = append(out, p)
				}
				return out
			}())
		}, "spec.serverPorts: Too many: 16: must have at most 15 items", ""},
		// excludedCIDRs
		{"CIDR without length", func(o map[string]any) { set(o, "spec.excludedCIDRs", []any{"10.0.0.0"}) }, `excludedCIDRs must be networks in CIDR notation, such as "10.0.0.0/8"`, ""},
		{"CIDR length 33", func(o map[string]any) { set(o, "spec.excludedCIDRs", []any{"10.0.0.0/33"}) }, "excludedCIDRs must be networks in CIDR notation", ""},
		{"CIDR of a host name", func(o map[string]any) { set(o, "spec.excludedCIDRs", []any{"example.com/8"}) }, "excludedCIDRs must be networks in CIDR notation", ""},
		{"IPv4-mapped IPv6 CIDR", func(o map[string]any) { set(o, "spec.excludedCIDRs", []any{"::ffff:10.0.0.0/104"}) }, "excludedCIDRs must be networks in CIDR notation", ""},
		{"CIDR twice", func(o map[string]any) { set(o, "spec.excludedCIDRs", []any{"10.0.0.0/8", "10.0.0.0/8"}) }, "Duplicate value", ""},
		{"IPv6 CIDR on an IPv4-only policy", func(o map[string]any) {
			set(o, "spec.excludedCIDRs", []any{"fd00::/8"})
			set(o, "spec.ipFamilies", []any{"IPv4"})
		}, "every excludedCIDRs entry must be of an IP family listed in ipFamilies", "spec.excludedCIDRs"},
		{"65 CIDRs", func(o map[string]any) {
			set(o, "spec.excludedCIDRs", strs(65, func(i int) string { return fmt.Sprintf("10.%d.0.0/16", i) }))
		}, "must have at most 64 items", ""},
		// interfaces
		{"interface with a slash", func(o map[string]any) { set(o, "spec.interfaces", []any{"eth0/1"}) }, "interfaces must be interface names of 1 to 15 letters", ""},
		{"interface wildcard in the middle", func(o map[string]any) { set(o, "spec.interfaces", []any{"e+th"}) }, "with an optional trailing '+' wildcard", ""},
		{"interface named dot-dot", func(o map[string]any) { set(o, "spec.interfaces", []any{".."}) }, "interfaces must be interface names", ""},
		{"interface name of 16 characters", func(o map[string]any) { set(o, "spec.interfaces", []any{"abcdefghijklmnop"}) }, "Too long: may not be more than 15", ""},
		{"empty interface name", func(o map[string]any) { set(o, "spec.interfaces", []any{""}) }, "interfaces must be interface names of 1 to 15", ""},
		{"17 interfaces", func(o map[string]any) {
			set(o, "spec.interfaces", strs(17, func(i int) string { return fmt.Sprintf("eth%d", i) }))
		}, "must have at most 16 items", ""},
		// ipFamilies
		{"unknown IP family", func(o map[string]any) { set(o, "spec.ipFamilies", []any{"IPv5"}) }, `Unsupported value: "IPv5": supported values: "IPv4", "IPv6"`, ""},
		{"no IP family", func(o map[string]any) { set(o, "spec.ipFamilies", []any{}) }, "should have at least 1 items", ""},
		{"IP family twice", func(o map[string]any) { set(o, "spec.ipFamilies", []any{"IPv4", "IPv4"}) }, "Duplicate value", ""},
		// sink
		{"unknown sink type", func(o map[string]any) { set(o, "spec.sink.type", "Kafka") }, `Unsupported value: "Kafka": supported values: "Classifier", "ClickHouse"`, ""},
		{"ClickHouse without clickhouse", func(o map[string]any) { set(o, "spec.sink.type", "ClickHouse") }, "a ClickHouse sink needs clickhouse.address", "spec.sink.clickhouse"},
		{"ClickHouse with an empty address", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "")
		}, "clickhouse.address must be HOST:PORT", ""},
		{"ClickHouse address without port", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse.db.svc")
		}, `clickhouse.address must be HOST:PORT, such as "clickhouse.db.svc:8123"`, ""},
		{"ClickHouse address as a URL", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "tcp://clickhouse:9000")
		}, "clickhouse.address must be HOST:PORT", ""},
		{"ClickHouse address with port 99999", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "ch:99999")
		}, "clickhouse.address must end in a port between 1 and 65535", "spec.sink.clickhouse.address"},
		{"ClickHouse address with port 0", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "ch:0")
		}, "clickhouse.address must end in a port between 1 and 65535", "spec.sink.clickhouse.address"},
		{"ClickHouse IPv6 address with port 65536", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "[fd00::1]:65536")
		}, "clickhouse.address must end in a port between 1 and 65535", "spec.sink.clickhouse.address"},
		{"ClickHouse credentials Secret with an upper-case name", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:8123")
			set(o, "spec.sink.clickhouse.credentialsSecret.name", "Bad_Name")
		}, "credentialsSecret.name must be a Secret name", "spec.sink.clickhouse.credentialsSecret.name"},
		{"ClickHouse CA Secret with an upper-case name", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:8443")
			set(o, "spec.sink.clickhouse.tls.caSecret.name", "Bad_Name")
		}, "caSecret.name must be a Secret name", "spec.sink.clickhouse.tls.caSecret.name"},
		{"ClickHouse CA Secret key that is no Secret key", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:8443")
			set(o, "spec.sink.clickhouse.tls.caSecret.name", "clickhouse-ca")
			set(o, "spec.sink.clickhouse.tls.caSecret.key", "ca crt")
		}, "caSecret.key must be a Secret key", "spec.sink.clickhouse.tls.caSecret.key"},
		{"ClickHouse credentials with a user name key that is no Secret key", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:8123")
			set(o, "spec.sink.clickhouse.credentialsSecret.name", "creds")
			set(o, "spec.sink.clickhouse.credentialsSecret.usernameKey", "bad key!")
		}, "credentialsSecret.usernameKey must be a Secret key", "spec.sink.clickhouse.credentialsSecret.usernameKey"},
		{"ClickHouse credentials with a password key that is no Secret key", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:8123")
			set(o, "spec.sink.clickhouse.credentialsSecret.name", "creds")
			set(o, "spec.sink.clickhouse.credentialsSecret.passwordKey", "/")
		}, "credentialsSecret.passwordKey must be a Secret key", "spec.sink.clickhouse.credentialsSecret.passwordKey"},
		{"classifier requesting an unknown resource", func(o map[string]any) {
			set(o, "spec.sink.classifier.resources.requests", map[string]any{"foo": "1"})
		}, "classifier.resources: only cpu, memory and ephemeral-storage may be requested or limited", "spec.sink.classifier.resources"},
		{"classifier limited in hugepages", func(o map[string]any) {
			set(o, "spec.sink.classifier.resources.limits", map[string]any{"hugepages-2Mi": "2Mi"})
		}, "classifier.resources: only cpu, memory and ephemeral-storage may be requested or limited", "spec.sink.classifier.resources"},
		{"classifier resources with a claim", func(o map[string]any) {
			set(o, "spec.sink.classifier.resources.claims", []any{map[string]any{"name": "x"}})
		}, "classifier.resources: claims are not supported", "spec.sink.classifier.resources"},
		{"storage on a ClickHouse sink", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:8123")
			set(o, "spec.sink.classifier.storage.size", "10Gi")
		}, "classifier.storage is the Classifier sink's volume: a ClickHouse sink keeps the records in ClickHouse", "spec.sink.classifier.storage"},
		{"ClickHouse database with a dash", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:9000")
			set(o, "spec.sink.clickhouse.database", "conn-scope")
		}, "clickhouse.database must be a plain identifier", ""},
		{"ClickHouse credentials without a Secret name", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:9000")
			set(o, "spec.sink.clickhouse.credentialsSecret.name", "")
		}, "spec.sink.clickhouse.credentialsSecret.name: Invalid value: \"\": spec.sink.clickhouse.credentialsSecret.name in body should be at least 1 chars long", ""},
		{"clickhouse settings on a Classifier sink", func(o map[string]any) {
			set(o, "spec.sink.clickhouse.address", "clickhouse:9000")
		}, "clickhouse is only read when type is ClickHouse", "spec.sink.clickhouse"},
		{"two classifier replicas on the Classifier sink", func(o map[string]any) { set(o, "spec.sink.classifier.replicas", 2) }, "the Classifier sink keeps its records on one volume and runs one replica", "spec.sink.classifier.replicas"},
		{"zero classifier replicas", func(o map[string]any) { set(o, "spec.sink.classifier.replicas", 0) }, "classifier.replicas must be between 1 and 20", ""},
		{"21 classifier replicas", func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse:9000")
			set(o, "spec.sink.classifier.replicas", 21)
		}, "classifier.replicas must be between 1 and 20", ""},
		{"storage of size 0", func(o map[string]any) { set(o, "spec.sink.classifier.storage.size", "0") }, `storage.size must be a positive size such as "10Gi"`, ""},
		{"storage of a negative size", func(o map[string]any) { set(o, "spec.sink.classifier.storage.size", "-1Gi") }, "storage.size must be a positive size", ""},
		{"storage without size", func(o map[string]any) { set(o, "spec.sink.classifier.storage.storageClassName", "fast") }, "spec.sink.classifier.storage.size: Required value", ""},
		{"storage class with an upper-case name", func(o map[string]any) {
			set(o, "spec.sink.classifier.storage.size", "1Gi")
			set(o, "spec.sink.classifier.storage.storageClassName", "Fast_SSD")
		}, "storage.storageClassName must be a StorageClass name", "spec.sink.classifier.storage.storageClassName"},
		{"geoIP claim with an upper-case name", func(o map[string]any) { set(o, "spec.sink.classifier.geoIP.claimName", "Bad_Name") }, "geoIP.claimName must be a PersistentVolumeClaim name", "spec.sink.classifier.geoIP.claimName"},
		{"geoIP without a claim", func(o map[string]any) { set(o, "spec.sink.classifier.geoIP.claimName", "") }, "claimName in body should be at least 1 chars long", ""},
		{"classifier image too long", func(o map[string]any) { set(o, "spec.sink.classifier.image", long) }, "spec.sink.classifier.image: Too long: may not be more than 512", ""},
		// agent
		{"agent image too long", func(o map[string]any) { set(o, "spec.agent.image", long) }, "spec.agent.image: Too long: may not be more than 512", ""},
		{"agent requesting a GPU", func(o map[string]any) {
			set(o, "spec.agent.resources.requests", map[string]any{"example.com/gpu": "1"})
		}, "agent.resources: only cpu, memory and ephemeral-storage may be requested or limited", "spec.agent.resources"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj := policy(fmt.Sprintf("bad-%d", i))
			tc.edit(obj)
			err := create(t, obj)
			if err == nil {
				t.Fatalf("the API server accepted it; want %q", tc.want)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("got %v, want an Invalid error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("message\n  %s\nlacks\n  %s", err, tc.want)
			}
			if tc.path != "" && !strings.Contains(err.Error(), tc.path+": ") {
				t.Errorf("message\n  %s\ndoes not name the field %s", err, tc.path)
			}
		})
	}
}

// The API server fills in the defaults a user leaves out.
func TestDefaultsAreFilledByTheAPIServer(t *testing.T) {
	envtestsuite.NeedEnv(t)
	obj := policy("defaults")
	if err := create(t, obj); err != nil {
		t.Fatal(err)
	}
	var got samplingv1alpha1.SamplingPolicy
	if err := k8s.Get(context.Background(), client.ObjectKey{Name: "defaults"}, &got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	if s.PacketCap != 10 || s.IdleTimeout == nil || s.IdleTimeout.Duration.String() != "3s" ||
		len(s.IPFamilies) != 2 || s.Sink.Type != samplingv1alpha1.SinkClassifier ||
		len(s.Tolerations) != 1 || s.Tolerations[0].Operator != "Exists" {
		t.Errorf("defaults: %+v", s)
	}
}

// Good values at the edges of every rule pass, and so do the samples.
func TestValidationAcceptsGoodInput(t *testing.T) {
	envtestsuite.NeedEnv(t)
	for i, edit := range []func(o map[string]any){
		func(o map[string]any) { set(o, "spec.probability", "1") },
		func(o map[string]any) { set(o, "spec.probability", "0.000000001") },
		func(o map[string]any) { set(o, "spec.probability", "1.0") },
		func(o map[string]any) { set(o, "spec.packetCap", 1); set(o, "spec.idleTimeout", "1s") },
		func(o map[string]any) { set(o, "spec.packetCap", 64); set(o, "spec.idleTimeout", "1m30s") },
		func(o map[string]any) { set(o, "spec.serverPorts", []any{1, 65535}) },
		func(o map[string]any) {
			set(o, "spec.excludedCIDRs", []any{"10.0.0.0/8", "192.168.1.7/32", "fd00::/8"})
		},
		func(o map[string]any) { set(o, "spec.interfaces", []any{"eth0", "ens+", "vlan.100", "br@x-1_a"}) },
		func(o map[string]any) { set(o, "metadata.name", "a"+strings.Repeat("b", 39)) },
		func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "[fd00::1]:9000")
			set(o, "spec.sink.classifier.replicas", 20)
		},
		func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse.db.svc:8443")
			set(o, "spec.sink.clickhouse.tls.caSecret.name", "clickhouse-ca")
		},
		func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse.db.svc:8443")
			set(o, "spec.sink.clickhouse.tls", map[string]any{})
		},
		func(o map[string]any) { set(o, "spec.sink.classifier.storage.size", "1Gi") },
		func(o map[string]any) {
			set(o, "spec.sink.classifier.storage.size", "1Gi")
			set(o, "spec.sink.classifier.storage.storageClassName", "fast-ssd.example")
			set(o, "spec.sink.classifier.geoIP.claimName", "geoip.v2")
		},
		func(o map[string]any) {
			set(o, "spec.nodeSelector", map[string]any{
				"node-role.kubernetes.io/edge": "", "pool": "a-b_c.9", strings.Repeat("p", 253) + "/" + strings.Repeat("n", 63): strings.Repeat("v", 63),
			})
		},
		func(o map[string]any) {
			set(o, "spec.tolerations", []any{
				map[string]any{"operator": "Exists"},
				map[string]any{"key": "a", "operator": "Equal", "value": "b", "effect": "NoExecute", "tolerationSeconds": 30},
				map[string]any{"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"},
				map[string]any{"key": "spot", "value": "true", "effect": "PreferNoSchedule"},
				map[string]any{"key": "x", "operator": "Exists", "value": ""},
				map[string]any{"key": "node-role.kubernetes.io/control-plane", "operator": "", "value": "", "effect": "NoSchedule"},
			})
		},
		func(o map[string]any) { set(o, "spec.tolerations", []any{}) },
		func(o map[string]any) {
			set(o, "spec.agent.resources", map[string]any{
				"requests": map[string]any{"cpu": "500m", "memory": "1G", "ephemeral-storage": "1Gi"},
				"limits":   map[string]any{"cpu": 1, "memory": "1.5Gi"},
			})
			set(o, "spec.sink.classifier.resources", map[string]any{
				"requests": map[string]any{"cpu": "1", "memory": "256Mi"},
				"limits":   map[string]any{"cpu": "1000m", "memory": "256Mi"},
			})
		},
		func(o map[string]any) {
			set(o, "spec.agent.resources", map[string]any{"requests": map[string]any{"cpu": "2"}})
		},
		func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "ch:1")
			set(o, "spec.sink.clickhouse.credentialsSecret.name", "clickhouse.creds")
			// GeoIP files are read by every classifier, whatever the sink.
			set(o, "spec.sink.classifier.geoIP.claimName", "geoip")
		},
		func(o map[string]any) {
			set(o, "spec.sink.type", "ClickHouse")
			set(o, "spec.sink.clickhouse.address", "clickhouse.db.svc:65535")
		},
	} {
		obj := policy(fmt.Sprintf("good-%d", i))
		edit(obj)
		if err := create(t, obj); err != nil {
			t.Errorf("case %d refused: %v", i, err)
		}
	}
	samples, _ := filepath.Glob(filepath.Join("..", "..", "config", "samples", "*.yaml"))
	for _, path := range samples {
		if filepath.Base(path) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if err := create(t, obj); err != nil {
			t.Errorf("sample %s refused: %v", path, err)
		}
	}
}
