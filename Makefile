# connscope: the commands a developer and CI run. Every target that needs
# tools installs them through hack/ scripts first (idempotent, Debian 12, root).

GO      ?= go
BIN     := bin/connscope
PKGS    := ./...
FUZZTIME ?= 30s

.PHONY: all build test test-unit lint fuzz bench demo setup setup-test clean envtest manifests generate images helm gen-chart chart-test

all: build

build:
	$(GO) build -o $(BIN) ./cmd/connscope

## setup-test installs what the tests drive: namespaces, netfilter, capture
## tools, real clients, scanners and an injector.
setup-test:
	bash hack/setup-scenarios.sh
	bash hack/setup-clickhouse.sh

## test runs every test: lint, unit tests, fuzz seed corpora, the
## real-traffic scenario tests in network namespaces (as root), and the
## operator's tests against a real kube-apiserver and etcd (envtest; they
## fail rather than skip here when the binaries are missing).
test: setup-test lint verify-generated envtest helm images
	bash hack/setup-browser.sh
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" CONNSCOPE_REQUIRE_ENVTEST=1 CONNSCOPE_REQUIRE_BROWSER=1 CONNSCOPE_REQUIRE_CLICKHOUSE=1 \
		CONNSCOPE_IMAGES_DIR=$(CURDIR)/.cache/images CONNSCOPE_REQUIRE_IMAGES=1 \
		$(GO) test -count=1 -timeout 30m $(PKGS)
	$(MAKE) e2e

## e2e runs connscope on a real single-node Kubernetes cluster on this
## machine (root; hack/cluster/e2e): the images (hack/images.sh), the node's
## binaries (hack/k8s-binaries.sh, built once into .cache/envtest: the
## longest part of a first run) and tools (hack/cluster/setup.sh), then the
## test: cluster up, helm install, a SamplingPolicy, real traffic, the
## classifier's API, policy deletion, helm uninstall, cluster down.
.PHONY: e2e demo-standalone
e2e: setup-test
	bash hack/images.sh >/dev/null
	bash hack/k8s-binaries.sh >/dev/null
	bash hack/cluster/images.sh >/dev/null
	CONNSCOPE_E2E=1 $(GO) test -count=1 -v -timeout 40m ./hack/cluster/e2e

## envtest builds kube-apiserver from the Kubernetes module and installs
## etcd, once, into .cache/envtest (hack/envtest.sh prints the folder for
## KUBEBUILDER_ASSETS).
envtest:
	bash hack/envtest.sh >/dev/null

## helm builds helm and kubectl into .cache/bin from the Go module proxy,
## once (hack/setup-helm.sh, hack/setup-kubectl.sh), for the chart tests.
helm:
	bash hack/setup-helm.sh >/dev/null
	bash hack/setup-kubectl.sh >/dev/null

## chart-test runs the chart's and kustomize's tests (charts/) against
## envtest with helm and kubectl.
chart-test: envtest helm
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" CONNSCOPE_REQUIRE_ENVTEST=1 \
		$(GO) test -count=1 -v ./charts/

## gen-chart rewrites the chart's generated files (CRD and RBAC copied
## from config/, the values README from values.yaml's comments).
gen-chart:
	bash hack/gen-chart.sh

## images writes connscope/connscope:latest and connscope/pause:latest as
## image archives into .cache/images (hack/images.sh: no Docker engine or
## registry needed; load them with `ctr -n k8s.io images import FILE`).
## IMAGE_TAG changes the tag.
IMAGE_TAG ?= latest
images:
	bash hack/images.sh --tag $(IMAGE_TAG)

## manifests regenerates config/crd/bases and config/rbac/role.yaml from
## the kubebuilder markers; generate regenerates the API's deep-copy code
## (controller-gen, installed into .cache/bin by the script).
manifests:
	bash hack/gen-manifests.sh manifests

generate:
	bash hack/gen-manifests.sh generate

## test-unit runs the tests that need neither root nor tools.
test-unit:
	CONNSCOPE_SKIP_ROOT_TESTS=1 $(GO) test -count=1 $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^vendor/')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## verify-generated fails when committed generated code is stale.
.PHONY: verify-generated
verify-generated:
	bash hack/gen-proto.sh --check
	bash hack/gen-manifests.sh --check
	bash hack/gen-chart.sh --check

## generate-proto regenerates packet/ingestpb from ingest.proto (protoc and
## its plugins are installed by the script; the generated code is committed).
.PHONY: generate-proto
generate-proto:
	bash hack/gen-proto.sh

## fuzz runs each fuzz target for FUZZTIME (go test runs their seeds always):
## the decoders of packets, capture files, NFLOG messages and the ingest
## protocol. A finding is written to the package's testdata/fuzz. With a
## duration, Go 1.26's coordinator can end a clean run with a bare "context
## deadline exceeded" and no file written (golang/go#75804, fixed in Go
## 1.27): not a finding; FUZZTIME=200000x (a count) avoids it.
fuzz:
	$(GO) test ./packet -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./classifier/capture -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME)
	$(GO) test ./agent/nflog -run '^$$' -fuzz '^FuzzHandle$$' -fuzztime $(FUZZTIME)
	$(GO) test ./agent/nflog -run '^$$' -fuzz '^FuzzParseMatchesTheWalk$$' -fuzztime $(FUZZTIME)
	$(GO) test ./packet/ingestpb -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(FUZZTIME)

## pgo writes cmd/connscope/default.pgo, the profile that go build uses to
## optimise connscope (profile-guided optimisation: hot calls inlined), from
## classify runs on synthetic captures (hack/pgo.sh). Run it after changing
## the engine's hot path and commit the profile; a stale one only costs speed.
.PHONY: pgo
pgo:
	bash hack/pgo.sh

## bench runs the engine benchmark (connscope classify against a bare read
## and peers: tshark, argus, tcptrace; hack/bench/run.sh), then the agent's:
## capture (NFLOG readers under a SYN flood: the agent, ulogd2, tshark) and
## datapath (iperf3 and wrk through the rules: whole runs in fresh
## namespaces, then the rules switched on and off within one run, with
## iptables-nft and with iptables-legacy), then the classifier's
## ingest (records per core with 1 and 8 agents, RST to API time;
## hack/bench/ingest.sh). Each alone: bench-engine, bench-agent (both agent
## benchmarks), bench-agent-capture, bench-agent-datapath, bench-ingest.
## The agent's and ingest need root; results in .cache/bench.
.PHONY: bench-engine bench-agent bench-agent-capture bench-agent-datapath bench-ingest
bench:
	bash hack/bench/run.sh
	bash hack/bench/agent-capture.sh
	bash hack/bench/agent-datapath.sh
	bash hack/bench/agent-datapath-toggle.sh
	bash hack/bench/ingest.sh
	bash hack/bench/clickhouse.sh

bench-engine:
	bash hack/bench/run.sh

bench-agent: bench-agent-capture bench-agent-datapath

bench-agent-capture:
	bash hack/bench/agent-capture.sh

bench-agent-datapath:
	bash hack/bench/agent-datapath.sh
	bash hack/bench/agent-datapath-toggle.sh
	BENCH_TOGGLE_BACKEND=legacy bash hack/bench/agent-datapath-toggle.sh

bench-ingest:
	bash hack/bench/ingest.sh

## bench-clickhouse: rows inserted/s per agent core (the clickhouse sink,
## against clickhouse-client) and connections classified/s from ClickHouse
## with 1 and 2 replicas (against the offline engine); hack/bench/clickhouse.sh.
.PHONY: bench-clickhouse
bench-clickhouse:
	bash hack/bench/clickhouse.sh

## demo runs connscope on a real single-node Kubernetes cluster on this
## machine (root; hack/cluster/demo.sh): the chart, a SamplingPolicy at
## probability 1, real traffic into the node (clients, scanners, a
## middlebox, an RST injector), the Radar-style summary, then the dashboard
## on http://127.0.0.1:8080/ until Ctrl-C; the cluster is removed on exit.
## demo-standalone does the same with `connscope standalone` in a server
## namespace and no cluster (hack/demo.sh; DEMO_EXIT_AFTER_SUMMARY=1 stops
## after the summary, DEMO_PORT moves the dashboard). demo-captures
## classifies the bundled captures instead.
.PHONY: demo-captures
demo: setup-test
	bash hack/cluster/demo.sh

demo-standalone: build
	CONNSCOPE=$(BIN) bash hack/demo.sh

demo-captures: build
	bash hack/demo-captures.sh

clean:
	rm -rf bin .cache

## dashboard-test installs Debian's chromium (hack/setup-browser.sh) and
## runs the dashboard's tests, the headless browser one included;
## screenshots land in .cache/dashboard/.
.PHONY: dashboard-test
dashboard-test:
	bash hack/setup-browser.sh
	CONNSCOPE_REQUIRE_BROWSER=1 $(GO) test -count=1 -v ./classifier/dashboard
