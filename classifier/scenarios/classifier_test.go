package scenarios

// End to end through the classifier service: two `connscope agent`s in
// the server namespace ship over gRPC, with the ingest token, to a real
// `connscope classifier` process in a namespace of its own, and the
// classifier's HTTP API must answer with the shares the scenarios'
// expectations give.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/connscope/connscope/classifier/report"
	"github.com/connscope/connscope/internal/netnstest"
	"github.com/connscope/connscope/packet/ingestpb"
)

// The collector namespace holds the classifier, joined to the server
// namespace by a veth pair of its own (as a classifier runs on another
// node than the agents).
const (
	collectorV4       = "10.231.3.2"
	serverCollectorV4 = "10.231.3.1"
	collectorIf       = "col0"
	serverCollectorIf = "srv-col"
	classifierGRPC    = collectorV4 + ":9443"
	classifierHTTP    = "127.0.0.1:8080" // inside the collector namespace
)

// The two agents split the scenarios by group, so that the API's answers
// merge two agents' records and a policy filter tells them apart; the
// intruder has a token of its own making, which the classifier must refuse.
var (
	webGroups  = []string{"clients", "scanners"}
	edgeGroups = []string{"middleboxes", "injectors", "marker"}
)

// TestScenariosThroughClassifier makes every scenario's traffic with two
// agents (policies web and edge, each sampling the ports of half of the
// scenarios) shipping to `connscope classifier` over gRPC with the bearer
// token the controller would mount, and a third agent (policy intruder)
// with a wrong token. Once the API has counted every connection, the Radar
// summary, the tag and signature summaries and the anomalies list must
// equal, exactly, what the scenarios' expectations add up to: over
// everything, per policy, and for IPv6 only. The intruder's records must be
// nowhere, its streams counted as refused, and a writer without a token
// refused with UNAUTHENTICATED.
func TestScenariosThroughClassifier(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario traffic and the classifier's idle timeout take ~1 min; skipped in -short mode")
	}
	netnstest.NeedRoot(t, "network namespaces, iptables, raw sockets")
	python := requireTools(t, agentTools...)
	cli := buildCLI(t)
	l := newLab(t, python)
	t.Cleanup(func() { l.keepArtefacts() })
	collector := netnstest.New(t, "collector")
	l.server.Must(t, "ip", "link", "add", serverCollectorIf, "type", "veth", "peer", "name", collectorIf, "netns", collector.Name())
	l.server.Must(t, "ip", "addr", "add", serverCollectorV4+"/24", "dev", serverCollectorIf)
	l.server.Must(t, "ip", "link", "set", serverCollectorIf, "up")
	collector.Must(t, "ip", "addr", "add", collectorV4+"/24", "dev", collectorIf)
	collector.Must(t, "ip", "link", "set", collectorIf, "up")

	l.installMiddleboxes(scenarios)
	serversReady := l.startServers(scenarios)

	// The token as the controller makes it: 32 random bytes, base64url,
	// in a file mounted into the agents and the classifier.
	token, wrong := filepath.Join(l.dir, "token"), filepath.Join(l.dir, "wrong-token")
	writeToken(t, token)
	writeToken(t, wrong)

	bin := cli()
	cls := collector.Start(t, l.dir, "classifier", bin, "classifier",
		"--grpc-addr", classifierGRPC, "--http-addr", classifierHTTP,
		"--store", "sqlite://"+filepath.Join(l.dir, "classifier.db"),
		"--ingest-token-file", token,
		"--idle-timeout", idleTimeout.String(), "--packet-cap", strconv.Itoa(agentPacketCap), "--log-json")
	api := &apiClient{t: t, ns: collector, proc: cls}
	api.waitReady()

	web := shippingAgent("web", 20, token, groupPorts(webGroups))
	edge := shippingAgent("edge", 21, token, groupPorts(edgeGroups))
	intruder := shippingAgent("intruder", 22, wrong, groupPorts(webGroups))
	serversReady()
	webProc := l.startAgent("agent-web", bin, web)
	edgeProc := l.startAgent("agent-edge", bin, edge)
	intruderProc := l.startAgent("agent-intruder", bin, intruder)

	l.drive(scenarios)
	noTokenRefused(t, l.server)

	// Everything counted: the connections the scenarios make, classified
	// or excluded, once each (the engines are judged by the wall clock
	// while the agents' streams are connected, so the agents stay up).
	all := expectOf(scenarios, func(*scenario) bool { return true })
	api.waitCounted(all.classified+all.excluded, idleTimeout+time.Minute)
	time.Sleep(2 * time.Second) // two more commits: nothing beyond
	l.stopAgent(webProc, web)
	l.stopAgent(edgeProc, edge)
	if err := intruderProc.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	if out := intruderProc.Stderr(); !strings.Contains(out, "refused the agent's credentials") {
		t.Errorf("the intruder's log does not say its credentials were refused:\n%s", out)
	}
	if stopped := agentLog(intruderProc, "stopped"); stopped == nil || stopped["shipped"] != 0.0 {
		t.Errorf("the intruder shipped records: %v", stopped)
	}

	scopes := []struct {
		query string
		keep  func(*scenario) bool
	}{
		{"", func(*scenario) bool { return true }},
		{"policy=web", func(s *scenario) bool { return slices.Contains(webGroups, s.group) }},
		{"policy=edge", func(s *scenario) bool { return slices.Contains(edgeGroups, s.group) }},
		{"ipVersion=IPv6", func(s *scenario) bool { return s.v6 }},
	}
	for _, sc := range scopes {
		want := expectOf(scenarios, sc.keep)
		api.checkStages(sc.query, want)
		api.checkBreakdown("tags", sc.query, want.tags, want)
		api.checkBreakdown("signatures", sc.query, want.sigs, want)
		api.checkAnomalies(sc.query, want)
	}
	var dims struct {
		Nodes    []string `json:"nodes"`
		Policies []string `json:"policies"`
	}
	api.get("/api/v1/dimensions", &dims)
	if !slices.Equal(dims.Policies, []string{"edge", "web"}) || !slices.Equal(dims.Nodes, []string{"server"}) {
		t.Errorf("/api/v1/dimensions: policies %q, nodes %q; want [edge web] and [server] (the intruder's records must be nowhere)", dims.Policies, dims.Nodes)
	}
	if n := api.metric("connscope_ingest_auth_failures_total"); n < 2 {
		t.Errorf("connscope_ingest_auth_failures_total = %v, want at least 2 (the intruder and the writer without a token)", n)
	}
	t.Logf("the API counted %d connections (%d classified, %d excluded) as the scenarios expect, overall, per policy and for IPv6",
		all.classified+all.excluded, all.classified, all.excluded)
}

// shippingAgent is an agent of policy (label bit and NFLOG group bit)
// sampling ports on the server's lab interface only (not the veth to the
// collector), shipping to the classifier with the token in tokenFile.
func shippingAgent(policy string, bit int, tokenFile string, ports []string) agentSpec {
	return agentSpec{policy: policy, labelBit: bit, group: bit, sink: "grpc://" + classifierGRPC, extra: []string{
		"--sink-token-file", tokenFile, "--node-name", "server", "--interfaces", serverIf,
		"--ports", strings.Join(ports, ","), "--shutdown-timeout", "2s",
	}}
}

// groupPorts returns the server ports of the scenarios of groups.
func groupPorts(groups []string) []string {
	var ports []string
	for _, s := range scenarios {
		if slices.Contains(groups, s.group) {
			ports = append(ports, strconv.Itoa(s.port))
		}
	}
	return ports
}

func writeToken(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	if err := os.WriteFile(path, []byte(base64.RawURLEncoding.EncodeToString(b)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// noTokenRefused pushes a batch without a bearer token, from the server
// namespace, and expects UNAUTHENTICATED.
func noTokenRefused(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+classifierGRPC,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(nsDialer(ns)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := ingestpb.NewIngestClient(conn).Push(ctx)
	if err == nil {
		err = stream.Send(&ingestpb.PacketBatch{Node: "server", Policy: "web", AgentInstance: "no-token", Sequence: 1})
		if err == nil || err == io.EOF { // EOF: the server ended the stream; Recv has its status
			_, err = stream.Recv()
		}
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("a writer without a token: %v, want UNAUTHENTICATED", err)
	}
}

// nsDialer dials TCP from inside ns.
func nsDialer(ns *netnstest.NS) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (c net.Conn, err error) {
		err = ns.Do(func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
}

// expected is what the API must answer for a set of scenarios: connection
// counts by stage, tag and signature, and the anomalous connections, each
// as "policy port stage [tags] signature".
type expected struct {
	classified, excluded int64
	stages, tags, sigs   map[string]int64
	anomalies            []string
}

// expectOf adds up the expectations of the scenarios keep selects: each
// scenario's want, count times.
func expectOf(ss []*scenario, keep func(*scenario) bool) expected {
	e := expected{stages: map[string]int64{}, tags: map[string]int64{}, sigs: map[string]int64{}}
	for _, s := range ss {
		if !keep(s) {
			continue
		}
		n := int64(s.count)
		if s.want.Excluded != "" {
			e.excluded += n
			continue
		}
		e.classified += n
		e.stages[s.want.Stage] += n
		for _, tag := range s.want.Tags {
			e.tags[tag] += n
		}
		if s.want.Signature != "" {
			e.sigs[s.want.Signature] += n
		}
		if s.want.Stage != noMatch {
			policy := "web"
			if slices.Contains(edgeGroups, s.group) {
				policy = "edge"
			}
			for range s.count {
				e.anomalies = append(e.anomalies, anomalyLine(policy, s.port, s.want.Stage, s.want.Tags, s.want.Signature))
			}
		}
	}
	slices.Sort(e.anomalies)
	return e
}

func anomalyLine(policy string, port int, stage string, tags []string, sig string) string {
	tags = slices.Clone(tags)
	slices.Sort(tags)
	return fmt.Sprintf("%s %d %s [%s] %q", policy, port, stage, strings.Join(tags, " "), sig)
}

// share is the percentage string the API must give for n of the
// classified connections (Radar's format, as report.Percent writes it).
func (e expected) share(n int64) string {
	if e.classified == 0 {
		return report.Percent(0)
	}
	return report.Percent(100 * float64(n) / float64(e.classified))
}

// apiClient asks the classifier's HTTP API, inside the collector
// namespace.
type apiClient struct {
	t    *testing.T
	ns   *netnstest.NS
	proc *netnstest.Proc
	http *http.Client
}

func (a *apiClient) client() *http.Client {
	if a.http == nil {
		dial := nsDialer(a.ns)
		a.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		}}
	}
	return a.http
}

// fetch GETs path and returns the status and body.
func (a *apiClient) fetch(path string) (int, []byte, error) {
	resp, err := a.client().Get("http://" + classifierHTTP + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// get GETs path, which must answer 200, and decodes the JSON body into v
// (the result of a Radar-shaped answer when v is not the whole).
func (a *apiClient) get(path string, v any) {
	a.t.Helper()
	code, b, err := a.fetch(path)
	if err != nil || code != http.StatusOK {
		a.t.Fatalf("GET %s: %d %v\n%s\nclassifier output:\n%s", path, code, err, b, a.proc.Output())
	}
	var env struct {
		Success bool            `json:"success"`
		Result  json.RawMessage `json:"result"`
	}
	if json.Unmarshal(b, &env) == nil && env.Success {
		b = env.Result
	}
	if err := json.Unmarshal(b, v); err != nil {
		a.t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
}

func (a *apiClient) waitReady() {
	a.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, err := a.fetch("/readyz")
		if err == nil && code == http.StatusOK {
			return
		}
		if !a.proc.Running() || time.Now().After(deadline) {
			a.t.Fatalf("the classifier is not ready (%d, %v):\n%s", code, err, a.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// breakdown is /api/v1/{tags,signatures}/summary's result.
type breakdown struct {
	Summary map[string]string `json:"summary_0"`
	Counts  map[string]int64  `json:"counts"`
	Conns   struct {
		Classified int64            `json:"classified"`
		Excluded   int64            `json:"excluded"`
		ByStage    map[string]int64 `json:"by_stage"`
	} `json:"connections"`
}

// waitCounted waits until the API has counted n connections, classified
// or excluded.
func (a *apiClient) waitCounted(n int64, timeout time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var b breakdown
		a.get("/api/v1/signatures/summary?dateRange=1d", &b)
		if got := b.Conns.Classified + b.Conns.Excluded; got >= n {
			return
		} else if time.Now().After(deadline) {
			a.t.Fatalf("after %v the API counts %d connections, want %d:\n%+v\nclassifier output:\n%s", timeout, got, n, b.Conns, a.proc.Output())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func query(path, filter string) string {
	path += "?dateRange=1d"
	if filter != "" {
		path += "&" + filter
	}
	return path
}

// checkStages asks the Radar summary and compares every stage's share.
func (a *apiClient) checkStages(filter string, want expected) {
	a.t.Helper()
	path := query("/radar/tcp_resets_timeouts/summary", filter)
	var res struct {
		Summary map[string]string `json:"summary_0"`
	}
	a.get(path, &res)
	wantShares := map[string]string{}
	for _, st := range []string{postSYN, postACK, postPSH, laterInFlow, noMatch} {
		wantShares[st] = want.share(want.stages[st])
	}
	if !maps.Equal(res.Summary, wantShares) {
		a.t.Errorf("GET %s: summary_0 %v, want %v", path, res.Summary, wantShares)
	}
}

// checkBreakdown asks /api/v1/<kind>/summary and compares every key's
// count and share, and the connection totals by stage.
func (a *apiClient) checkBreakdown(kind, filter string, counts map[string]int64, want expected) {
	a.t.Helper()
	path := query("/api/v1/"+kind+"/summary", filter)
	var b breakdown
	a.get(path, &b)
	for name := range counts {
		if _, ok := b.Counts[name]; !ok {
			a.t.Errorf("GET %s: no %q in counts %v", path, name, b.Counts)
		}
	}
	for name, n := range b.Counts {
		if n != counts[name] || b.Summary[name] != want.share(counts[name]) {
			a.t.Errorf("GET %s: %q counts %d (%s%%), want %d (%s%%)", path, name, n, b.Summary[name], counts[name], want.share(counts[name]))
		}
	}
	wantStages := map[string]int64{}
	for _, st := range []string{postSYN, postACK, postPSH, laterInFlow, noMatch} {
		wantStages[st] = want.stages[st]
	}
	if b.Conns.Classified != want.classified || b.Conns.Excluded != want.excluded || !maps.Equal(b.Conns.ByStage, wantStages) {
		a.t.Errorf("GET %s: connections %+v, want classified %d, excluded %d, by stage %v", path, b.Conns, want.classified, want.excluded, wantStages)
	}
}

// checkAnomalies asks the recent anomalous connections and compares them,
// as a multiset, with the scenarios' anomalous connections.
func (a *apiClient) checkAnomalies(filter string, want expected) {
	a.t.Helper()
	path := query("/api/v1/anomalies", filter) + "&limit=1000"
	var res struct {
		Conns []struct {
			Policy    string   `json:"policy"`
			Port      int      `json:"server_port"`
			Stage     string   `json:"stage"`
			Tags      []string `json:"tags"`
			Signature string   `json:"signature"`
		} `json:"connections"`
	}
	a.get(path, &res)
	var got []string
	for _, c := range res.Conns {
		got = append(got, anomalyLine(c.Policy, c.Port, c.Stage, c.Tags, c.Signature))
	}
	slices.Sort(got)
	if !slices.Equal(got, want.anomalies) {
		a.t.Errorf("GET %s: anomalies\n  %s\nwant\n  %s", path, strings.Join(got, "\n  "), strings.Join(want.anomalies, "\n  "))
	}
}

// metric returns the value of an unlabelled metric on /metrics.
func (a *apiClient) metric(name string) float64 {
	a.t.Helper()
	code, b, err := a.fetch("/metrics")
	if err != nil || code != http.StatusOK {
		a.t.Fatalf("GET /metrics: %d %v", code, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				a.t.Fatalf("/metrics: %s", line)
			}
			return f
		}
	}
	a.t.Fatalf("/metrics has no %s", name)
	return 0
}
