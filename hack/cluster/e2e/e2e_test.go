package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/api"
	"github.com/connscope/connscope/internal/hosttest"
	"github.com/connscope/connscope/internal/netnstest"
)

const (
	release     = "connscope"
	systemNS    = "connscope-system"
	agentsNS    = "connscope-agents"
	policy      = "e2e"
	crdName     = "samplingpolicies.sampling.connscope.dev"
	capNetAdmin = 12
	capNetRaw   = 13
)

// machineWords pick the lines of the machine's own rule sets that mention
// connscope or Kubernetes: the cluster must not change them.
var machineWords = []string{"connscope", "kube", "cni"}

// cluster is a cluster started by hack/cluster/up.sh for one test.
type cluster struct {
	t     *testing.T
	root  string
	name  string
	dir   string
	netns string
}

func TestConnscopeOnARealCluster(t *testing.T) {
	if os.Getenv("CONNSCOPE_E2E") != "1" {
		t.Skip("the end-to-end test boots a Kubernetes cluster: it runs under `make e2e` (CONNSCOPE_E2E=1)")
	}
	netnstest.NeedRoot(t, "a Kubernetes node: network namespaces, containerd, kubelet")
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	c := &cluster{t: t, root: root, name: "e2e-" + hex.EncodeToString(b)}
	c.dir = "/var/tmp/connscope-cluster/" + c.name
	c.netns = "csk-" + c.name
	hostRules := hosttest.MachineRules(machineWords...)
	began := time.Now()
	phase := func(what string, since time.Time) { t.Logf("%-34s %6.1fs", what, time.Since(since).Seconds()) }

	// Up. Its cleanup stops the cluster and checks nothing is left.
	t.Cleanup(func() {
		since := time.Now()
		c.down()
		phase("cluster down", since)
		c.checkNothingLeft(hostRules)
		phase("whole test", began)
	})
	since := time.Now()
	c.script(15*time.Minute, "hack/cluster/up.sh")
	phase("cluster up (binaries cached)", since)

	// Install as a user would: the chart, then a policy.
	since = time.Now()
	// The release lives in default: the chart makes its two namespaces
	// itself. They are not kept on uninstall here, so that only the CRD
	// may stay. hack/images.sh tags the images it loads "latest", not the
	// chart's appVersion (the chart's default tag), so the tag is given.
	c.helm(5*time.Minute, "install", release, filepath.Join(root, "charts/connscope"),
		"--namespace", "default", "--wait", "--timeout", "4m",
		"--set", "image.tag=latest", "--set", "image.pullPolicy=Never", "--set", "namespaces.keep=false")
	phase("helm install", since)
	since = time.Now()
	c.kubectlIn(`apiVersion: sampling.connscope.dev/v1alpha1
kind: SamplingPolicy
metadata:
  name: `+policy+`
spec:
  probability: "1"
  interfaces: [s0]
  ipFamilies: [IPv4]
`, "apply", "-f", "-")
	// The controller makes the DaemonSet and the Deployment: first wait for
	// them to exist, then for their rollout.
	c.kubectl(2*time.Minute, "-n", agentsNS, "wait", "--for=create", "daemonset/connscope-"+policy+"-agent", "--timeout=2m")
	c.kubectl(2*time.Minute, "-n", systemNS, "wait", "--for=create", "deployment/connscope-"+policy+"-classifier", "--timeout=2m")
	c.kubectl(4*time.Minute, "-n", agentsNS, "rollout", "status", "daemonset/connscope-"+policy+"-agent", "--timeout=4m")
	c.kubectl(4*time.Minute, "-n", systemNS, "rollout", "status", "deployment/connscope-"+policy+"-classifier", "--timeout=4m")
	c.kubectl(3*time.Minute, "wait", "samplingpolicy/"+policy, "--for=condition=Ready", "--timeout=3m")
	phase("policy Ready", since)

	// The checks below run in the test's own goroutine (the cluster's
	// helpers fail the test), one after the other.
	c.checkAgentCapabilities(t)

	// The agents push over TLS (the traffic's summary below arrives only
	// that way): the policy names a grpcs:// endpoint, and the classifier
	// serves the certificate the controller issued.
	if ep := c.kubectl(time.Minute, "get", "samplingpolicy", policy, "-o", "jsonpath={.status.ingestEndpoint}"); !strings.HasPrefix(ep, "grpcs://") {
		t.Errorf("ingest endpoint %q, want grpcs://", ep)
	}
	if logs := c.kubectl(time.Minute, "-n", systemNS, "logs", "deployment/connscope-"+policy+"-classifier"); !strings.Contains(logs, "ingest serves TLS") {
		t.Errorf("the classifier does not say it serves TLS:\n%s", logs)
	}

	// Real traffic from a client namespace, through a router with a
	// middlebox and an RST injector, to servers in the node's namespace:
	// hack/demo.sh with the node as its server.
	since = time.Now()
	classifierIP := strings.TrimSpace(c.kubectl(time.Minute, "-n", systemNS, "get", "service",
		"connscope-"+policy+"-classifier", "-o", "jsonpath={.spec.clusterIP}"))
	base := "http://" + classifierIP + ":8080"
	summaryFile := filepath.Join(t.TempDir(), "summary.json")
	c.demo(base, summaryFile)
	phase("traffic and summary", since)

	// The classifier's API shows the stages and tags of the traffic.
	{
		var s struct {
			Result struct {
				Summary0 map[string]string `json:"summary_0"`
			} `json:"result"`
		}
		b, err := os.ReadFile(summaryFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("summary %s: %v", b, err)
		}
		for _, stage := range []string{"post_syn", "post_ack", "post_psh"} {
			if f, err := strconv.ParseFloat(s.Result.Summary0[stage], 64); err != nil || f <= 0 {
				t.Errorf("%s share is %q, want more than 0 (summary %s)", stage, s.Result.Summary0[stage], b)
			}
		}
		var tags struct {
			Result api.BreakdownResult `json:"result"`
		}
		c.getJSON(base+"/api/v1/tags/summary?dateRange=1d", &tags)
		t.Logf("tags: %v", tags.Result.Counts)
		// nmap: the SYN scan; reset: the aborts, the scan's refusals and the
		// injected RSTs; timeout: the flows the middlebox blackholed;
		// ttl_jump: the injector's TTL differs from the client's.
		for _, tag := range []string{"nmap", "reset", "timeout", "ttl_jump"} {
			if tags.Result.Counts[tag] == 0 {
				t.Errorf("no connection tagged %s: %v", tag, tags.Result.Counts)
			}
		}
		var dims struct {
			Result api.Dimensions `json:"result"`
		}
		c.getJSON(base+"/api/v1/dimensions", &dims)
		if d := dims.Result; len(d.Nodes) != 1 || d.Nodes[0] != c.name || len(d.Policies) != 1 || d.Policies[0] != policy {
			t.Errorf("dimensions %+v: want the node %s and the policy %s only", d, c.name, policy)
		}
		var an struct {
			Result struct {
				Connections []api.Anomaly `json:"connections"`
			} `json:"result"`
		}
		c.getJSON(base+"/api/v1/anomalies?limit=1000", &an)
		post := map[string]int{}
		for _, a := range an.Result.Connections {
			post[a.Stage]++
			if a.Server != "10.231.2.10" || a.Node != c.name {
				t.Errorf("anomaly %+v: want server 10.231.2.10 on node %s", a, c.name)
			}
		}
		if post["post_syn"] == 0 || post["post_ack"] == 0 || post["post_psh"] == 0 {
			t.Errorf("anomalies by stage %v: want post_syn, post_ack and post_psh", post)
		}
	}

	// Deleting the policy: its finalizer waits for the agents to remove
	// their rules, so once it is gone no rule of connscope may be left.
	since = time.Now()
	c.kubectl(3*time.Minute, "delete", "samplingpolicy", policy, "--wait=true", "--timeout=3m")
	phase("policy deleted", since)
	if rules := c.nodeRules(); rules != "" {
		t.Errorf("rules left in the node's namespace after the policy was deleted:\n%s", rules)
	}

	since = time.Now()
	c.helm(4*time.Minute, "uninstall", release, "--namespace", "default", "--wait", "--timeout", "3m")
	phase("helm uninstall", since)
	c.checkOnlyCRDLeft(t)
}

// script runs a hack/cluster script for this cluster and fails the test
// on error (with its output).
func (c *cluster) script(timeout time.Duration, script string, env ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), append([]string{"CLUSTER_NAME=" + c.name}, env...)...)
	// On timeout the script gets SIGTERM, which runs its cleanup.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// run runs the cluster's kubectl or helm wrapper (they run in the node's
// network namespace) with stdin, and fails the test on error.
func (c *cluster) run(timeout time.Duration, stdin, tool string, args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.dir, "bin", tool), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s%s\n%s", tool, strings.Join(args, " "), err, out, stderr.Bytes(), c.describe())
	}
	return string(out)
}

func (c *cluster) kubectl(timeout time.Duration, args ...string) string {
	c.t.Helper()
	return c.run(timeout, "", "kubectl", args...)
}

func (c *cluster) kubectlIn(stdin string, args ...string) string {
	c.t.Helper()
	return c.run(time.Minute, stdin, "kubectl", args...)
}

func (c *cluster) helm(timeout time.Duration, args ...string) string {
	c.t.Helper()
	return c.run(timeout, "", "helm", args...)
}

// describe returns what helps to read a failure: pods, events, the
// controller's and agents' logs.
func (c *cluster) describe() string {
	var b strings.Builder
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "samplingpolicies", "-o", "yaml"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"-n", systemNS, "logs", "-l", "app.kubernetes.io/name=connscope", "--all-containers", "--tail=40", "--prefix"},
		{"-n", agentsNS, "logs", "-l", "app.kubernetes.io/name=connscope", "--all-containers", "--tail=40", "--prefix"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, _ := exec.CommandContext(ctx, filepath.Join(c.dir, "bin", "kubectl"), args...).CombinedOutput()
		cancel()
		fmt.Fprintf(&b, "--- kubectl %s\n%s", strings.Join(args, " "), out)
	}
	return b.String()
}

// inNode runs a command in the node's network namespace.
func (c *cluster) inNode(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + c.netns}, args...)...).Output()
	return string(out), err
}

// getJSON reads url from the node's namespace (the classifier's Service
// address) into v.
func (c *cluster) getJSON(url string, v any) {
	c.t.Helper()
	out, err := c.inNode(30*time.Second, "curl", "-fsS", "--max-time", "20", url)
	if err != nil {
		c.t.Fatalf("GET %s: %v %s", url, err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("GET %s: %v\n%s", url, err, out)
	}
}

// demo drives the traffic of hack/demo.sh into the node and writes the
// classifier's summary to summaryFile.
func (c *cluster) demo(base, summaryFile string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "hack/demo.sh")
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), "DEMO_SERVER_NETNS="+c.netns, "DEMO_CLASSIFIER_URL="+base,
		"DEMO_EXIT_AFTER_SUMMARY=1", "DEMO_SUMMARY_FILE="+summaryFile, "CONNSCOPE_DEMO_ID="+c.name)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	c.t.Logf("hack/demo.sh:\n%s", out)
	if err != nil {
		c.t.Fatalf("hack/demo.sh: %v\n%s", err, c.describe())
	}
}

// checkAgentCapabilities reads the agent's process status on the node: the
// capabilities it runs with are exactly NET_ADMIN and NET_RAW (the rules
// were installed and records shipped with them: the API checks show that),
// it cannot gain more (no_new_privs), and seccomp filters its system calls.
func (c *cluster) checkAgentCapabilities(t *testing.T) {
	// The agent pod's container, the node's address and the metrics port.
	pod := strings.Fields(c.kubectl(time.Minute, "-n", agentsNS, "get", "pods",
		"-l", "app.kubernetes.io/component=agent,sampling.connscope.dev/policy="+policy,
		"-o", "jsonpath={.items[0].status.containerStatuses[0].containerID} {.items[0].status.hostIP} {.items[0].spec.containers[0].ports[0].containerPort}"))
	if len(pod) != 3 {
		t.Fatalf("agent pod: container, host IP and metrics port %q", pod)
	}
	id := strings.TrimPrefix(pod[0], "containerd://")
	out, err := exec.Command("ctr", "--address", filepath.Join(c.dir, "containerd.sock"), "-n", "k8s.io",
		"tasks", "ls").Output()
	if err != nil {
		t.Fatalf("ctr tasks ls: %v", err)
	}
	pid := ""
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == id {
			pid = f[1]
		}
	}
	if pid == "" {
		t.Fatalf("the agent's container %s has no task:\n%s", id, out)
	}
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := hosttest.CheckConfined(t, "the agent (NET_ADMIN and NET_RAW only)", string(status), uint64(1)<<capNetAdmin|uint64(1)<<capNetRaw)
	t.Logf("agent pid %s: CapEff %s NoNewPrivs %s Seccomp %s", pid, fields["CapEff"], fields["NoNewPrivs"], fields["Seccomp"])

	// Its /metrics and probes listen on the node's address only, not on
	// every interface of the host it shares the network of.
	port, err := strconv.ParseUint(pod[2], 10, 16)
	if err != nil {
		t.Fatalf("agent metrics port %q: %v", pod[2], err)
	}
	addrs := listening(t, pid, uint16(port))
	if len(addrs) != 1 || addrs[0] != pod[1] {
		t.Errorf("the agent's metrics port %d listens on %v, want the node's address %s only", port, addrs, pod[1])
	}
	t.Logf("agent metrics listen on %v:%d", addrs, port)
}

// listening returns the local addresses of the TCP sockets listening on
// port in the network namespace of process pid (/proc/PID/net/tcp and
// tcp6, whose addresses are 32-bit words in host byte order).
func listening(t *testing.T, pid string, port uint16) []string {
	t.Helper()
	var addrs []string
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile("/proc/" + pid + "/net/" + f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(l)
			if len(fs) < 4 || fs[3] != "0A" { // TCP_LISTEN
				continue
			}
			ip, p, ok := strings.Cut(fs[1], ":")
			raw, err := hex.DecodeString(ip)
			if n, perr := strconv.ParseUint(p, 16, 16); !ok || err != nil || perr != nil || uint16(n) != port {
				continue
			}
			for i := 0; i+4 <= len(raw); i += 4 { // each word to network order
				raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
			}
			a, _ := netip.AddrFromSlice(raw)
			addrs = append(addrs, a.Unmap().String())
		}
	}
	return addrs
}

// nodeRules returns the lines of the node namespace's rule sets (both
// backends, both families) that belong to connscope's agents: their chains
// (CONNSCOPE-...) and their comments ("connscope policy ..."). kube-proxy's
// rules for the Services in connscope-system are not theirs.
func (c *cluster) nodeRules() string {
	var lines []string
	for _, prog := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := c.inNode(30*time.Second, prog)
		if err != nil {
			c.t.Fatalf("%s in the node: %v", prog, err)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "CONNSCOPE") || strings.Contains(l, "connscope policy") {
				lines = append(lines, prog+": "+l)
			}
		}
	}
	return strings.Join(lines, "\n")
}

// checkOnlyCRDLeft lists every kind the API serves, in every namespace, and
// fails on any object of connscope but its CRD (events aside: they expire).
func (c *cluster) checkOnlyCRDLeft(t *testing.T) {
	for _, ns := range []string{systemNS, agentsNS} {
		// The namespaces may belong to the release; then they go too.
		c.kubectl(3*time.Minute, "wait", "--for=delete", "namespace/"+ns, "--timeout=3m")
	}
	kinds := strings.Fields(c.kubectl(time.Minute, "api-resources", "--verbs=list", "-o", "name"))
	var list []string
	for _, k := range kinds {
		if k == "events" || k == "events.events.k8s.io" {
			continue
		}
		list = append(list, k)
	}
	out := c.kubectl(2*time.Minute, "get", strings.Join(list, ","), "-A", "-o",
		`jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name} {.metadata.labels}{"\n"}{end}`)
	var left []string
	crd := false
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(strings.ToLower(l), "connscope") {
			continue
		}
		if strings.HasPrefix(l, "CustomResourceDefinition//"+crdName+" ") {
			crd = true
			continue
		}
		// The API server's own entry for the CRD's group goes with the CRD.
		if strings.HasPrefix(l, "APIService//v1alpha1.sampling.connscope.dev ") && strings.Contains(l, "automanaged") {
			continue
		}
		left = append(left, l)
	}
	if !crd {
		t.Errorf("the CRD %s is gone; helm keeps CRDs", crdName)
	}
	if len(left) > 0 {
		t.Errorf("left after helm uninstall:\n%s", strings.Join(left, "\n"))
	}
}

// down stops the cluster (hack/cluster/down.sh); on failure the logs are
// kept in .cache/cluster/logs/NAME.
func (c *cluster) down() {
	env := []string{"CLUSTER_NAME=" + c.name}
	if c.t.Failed() {
		logs := filepath.Join(c.root, ".cache/cluster/logs", c.name)
		env = append(env, "CLUSTER_LOGS_TO="+logs)
		c.t.Logf("the cluster's logs: %s", logs)
	}
	cmd := exec.Command("bash", "hack/cluster/down.sh")
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Errorf("hack/cluster/down.sh: %v\n%s", err, out)
	}
}

// checkNothingLeft fails on anything of the cluster left on the machine.
func (c *cluster) checkNothingLeft(hostRules string) {
	t := c.t
	if _, err := os.Stat("/run/netns/" + c.netns); err == nil {
		t.Errorf("the node's namespace %s is left", c.netns)
	}
	if _, err := os.Stat(c.dir); err == nil {
		t.Errorf("the folder %s is left", c.dir)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), c.dir) {
		t.Errorf("mounts under %s are left", c.dir)
	}
	if cgs, _ := filepath.Glob("/sys/fs/cgroup/*/connscope-" + c.name); len(cgs) > 0 {
		t.Errorf("cgroups left: %v", cgs)
	}
	hosttest.CheckNoProcessWithEnv(t, "CONNSCOPE_CLUSTER", c.name)
	hosttest.CheckMachineRules(t, hostRules, machineWords...)
}
