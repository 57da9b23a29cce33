package agent

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/connscope/connscope/agent/rules"
)

// validConfig is a configuration Validate accepts.
func validConfig() Config {
	c := DefaultConfig()
	c.Probability = 0.01
	c.LabelBit = 3
	c.NFLOGGroup = 5
	c.Sink = "file:///var/lib/connscope/records.pcapng"
	c.NodeName = "node-1"
	return c
}

const exampleYAML = `# connscope agent configuration
---
policy: web
probability: 0.0001   # one new connection in 10,000
packetCap: 10
labelBit: 3
nflogGroup: 5
copyRange: 128
ports: [80, 443]
excludeCIDRs:
  - 10.0.0.0/8
  - "fd00::/8"
interfaces: ['eth0', "ens+"]
ipFamilies:
- IPv4
- IPv6
backend: auto
resync: 10s
sink: "grpc://connscope-classifier.connscope-system.svc:9443"
sinkTokenFile: /var/run/secrets/connscope/token
queueCapacity: 65536
nodeName: node-1
metricsAddr: ":9477"
sinkUnreadyAfter: 2m
shutdownTimeout: 10s
`

func exampleConfig() Config {
	return Config{
		Policy: "web", Probability: 0.0001, PacketCap: 10, LabelBit: 3, NFLOGGroup: 5, CopyRange: 128,
		Ports: []int{80, 443}, ExcludeCIDRs: []string{"10.0.0.0/8", "fd00::/8"}, Interfaces: []string{"eth0", "ens+"},
		IPFamilies: []string{"IPv4", "IPv6"}, Backend: "auto", Resync: Duration(10 * time.Second),
		Sink: "grpc://connscope-classifier.connscope-system.svc:9443", SinkTokenFile: "/var/run/secrets/connscope/token",
		QueueCapacity: 65536, NodeName: "node-1", MetricsAddr: ":9477",
		SinkUnreadyAfter: Duration(2 * time.Minute), ShutdownTimeout: Duration(10 * time.Second),
	}
}

func TestYAMLAndJSONFilesReadTheSameConfig(t *testing.T) {
	fromYAML, err := ParseConfig([]byte(exampleYAML))
	if err != nil {
		t.Fatal(err)
	}
	if want := exampleConfig(); !reflect.DeepEqual(fromYAML, want) {
		t.Fatalf("YAML:\n got %+v\nwant %+v", fromYAML, want)
	}
	js, err := json.MarshalIndent(fromYAML, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := ParseConfig(js)
	if err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Fatalf("JSON round trip:\n got %+v\nwant %+v\n%s", fromJSON, fromYAML, js)
	}
	if err := fromYAML.Validate(); err != nil {
		t.Fatalf("the example does not validate: %v", err)
	}
	// Durations are written as Go writes them, for people to read.
	if !strings.Contains(string(js), `"resync": "10s"`) {
		t.Errorf("resync not written as \"10s\":\n%s", js)
	}
}

func TestFileKeysLeftOutKeepTheirDefaults(t *testing.T) {
	c, err := ParseConfig([]byte("probability: 1\nlabelBit: 0\nnflogGroup: 0\nsink: file:///tmp/x.pcapng\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Probability, want.LabelBit, want.NFLOGGroup, want.Sink = 1, 0, 0, "file:///tmp/x.pcapng"
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	// An explicit empty metrics address turns the server off; null keeps
	// nothing (the list is emptied, and Validate says so).
	c, err = ParseConfig([]byte("metricsAddr: \"\"\nports: []\nipFamilies:\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.MetricsAddr != "" || len(c.Ports) != 0 || c.IPFamilies != nil {
		t.Fatalf("got %+v", c)
	}
}

func TestYAMLOutsideTheSubsetIsRefusedWithItsLine(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "policy: a\nprobabilty: 0.1\n", `line 2: unknown key "probabilty": the keys are policy, probability, packetCap, labelBit, nflogGroup, copyRange, ports, excludeCIDRs, interfaces, ipFamilies, backend, resync, sink, sinkTokenFile, sinkCAFile, queueCapacity, nodeName, metricsAddr, sinkUnreadyAfter, shutdownTimeout (README, ` + "`connscope agent`)"},
		{"key in another case", "policy: a\nlabelbit: 3\n", `line 2: unknown key "labelbit": did you mean labelBit? (keys are case-sensitive)`},
		{"nested mapping", "policy:\n  name: web\n", "line 2: unexpected indentation: nested mappings"},
		{"inline mapping", "policy: {name: web}\n", "line 1:"},
		{"anchor", "policy: &p web\n", "anchors, aliases, tags"},
		{"block scalar", "policy: |\n  web\n", "block scalars"},
		{"tab", "policy:\tweb\n", "expected key: value"},
		{"tab indent", "ports:\n\t- 80\n", "tabs cannot indent"},
		{"duplicate", "policy: a\npolicy: b\n", "line 2: key policy given twice (first on line 1)"},
		{"two documents", "policy: a\n---\npolicy: b\n", "a second YAML document"},
		{"quoted number", "packetCap: \"10\"\n", "line 1: packetCap is a number; write it without quotes"},
		{"not a number", "probability: often\n", `probability: "often" is not a number`},
		{"fraction for an integer", "labelBit: 1.5\n", `labelBit: "1.5" is not a whole number`},
		{"list for a scalar", "policy: [a, b]\n", "policy takes one value, not a list"},
		{"unterminated", "sink: \"grpc://x:1\n", "unterminated double-quoted string"},
		{"bad duration", "policy: a\nresync: soon\n", `line 2: resync: "soon" is not a duration such as 10s or 1m30s`},
		{"duration without a unit", "policy: a\nshutdownTimeout: 10\n", `line 2: shutdownTimeout: "10" is not a duration such as 10s or 1m30s`},
		{"unterminated list", "ports: [80, 443\n", "must close with ]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestYAMLScalarsAndComments(t *testing.T) {
	c, err := ParseConfig([]byte(strings.Join([]string{
		"policy: 'it''s-odd' # not a valid policy name, but a valid string",
		"nodeName: node#1",
		"sink: \"file:///tmp/a b#c.pcapng\"  # quoted hash",
		"ports: 8080",
		"interfaces: [ 'eth0' , \"eth1\",eth2 ]",
		"...",
	}, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != "it's-odd" || c.NodeName != "node#1" || c.Sink != "file:///tmp/a b#c.pcapng" ||
		!reflect.DeepEqual(c.Ports, []int{8080}) || !reflect.DeepEqual(c.Interfaces, []string{"eth0", "eth1", "eth2"}) {
		t.Fatalf("got %+v", c)
	}
}

func TestJSONFileIsStrict(t *testing.T) {
	for _, tc := range []struct{ json, want string }{
		{`{"probabilty": 0.1}`, `unknown key "probabilty": the keys are policy, probability, packetCap,`},
		// encoding/json alone would take these for packetCap
		{`{"packetcap": 5}`, `unknown key "packetcap": did you mean packetCap? (keys are case-sensitive)`},
		{`{"PacketCap": 5}`, `unknown key "PacketCap": did you mean packetCap? (keys are case-sensitive)`},
		{`{"packetCap": "10"}`, "packetCap: a string cannot be read as a whole number"},
		{`{"policy": "a", "resync": "10"}`, `resync: "10" is not a duration such as 10s or 1m30s`},
		{`{"policy": "a"} {"policy": "b"}`, "more than one document"},
		// encoding/json alone would keep the last, where YAML refuses it
		{`{"probability": 0.1, "policy": "a", "probability": 1}`, "key probability given twice"},
	} {
		_, err := ParseConfig([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.json, err, tc.want)
		}
	}
}

func TestValidateNamesTheFlagAndKeyOfEveryProblem(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{"required settings missing", func(c *Config) { *c = DefaultConfig() }, []string{
			"--probability (probability): is required",
			"--label-bit (labelBit): is required",
			"--nflog-group (nflogGroup): is required",
			"--sink (sink): is required",
		}},
		{"probability above 1", func(c *Config) { c.Probability = 1.5 }, []string{"--probability (probability): 1.5 is not in (0, 1]"}},
		{"probability 0", func(c *Config) { c.Probability = 0 }, []string{"--probability (probability): 0 is not in (0, 1]"}},
		{"negative probability", func(c *Config) { c.Probability = -0.5 }, []string{"--probability (probability): -0.5 is not in (0, 1]"}},
		// -1 is a value given, not a missing one (it once read "is required")
		{"probability -1", func(c *Config) { c.Probability = -1 }, []string{"--probability (probability): -1 is not in (0, 1]"}},
		{"label bit -1", func(c *Config) { c.LabelBit = -1 }, []string{"--label-bit (labelBit): -1 is not in 0-127"}},
		{"group -1", func(c *Config) { c.NFLOGGroup = -1 }, []string{"--nflog-group (nflogGroup): -1 is not in 0-65535"}},
		{"probability below the kernel's resolution", func(c *Config) { c.Probability = 1e-10 }, []string{"rounds to 0 in the kernel's 31-bit fixed point"}},
		{"packet cap", func(c *Config) { c.PacketCap = 0 }, []string{"--packet-cap (packetCap): 0 is not in 1-64"}},
		{"label bit", func(c *Config) { c.LabelBit = 128 }, []string{"--label-bit (labelBit): 128 is not in 0-127"}},
		{"group", func(c *Config) { c.NFLOGGroup = 70000 }, []string{"--nflog-group (nflogGroup): 70000 is not in 0-65535"}},
		{"copy range", func(c *Config) { c.CopyRange = 1500 }, []string{"--copy-range (copyRange): 1500 is not in 60-512"}},
		{"ports", func(c *Config) { c.Ports = []int{0, 70000} }, []string{"--ports (ports): 0 is not a TCP port", "--ports (ports): 70000 is not a TCP port"}},
		{"duplicate port", func(c *Config) { c.Ports = []int{80, 80} }, []string{"ports: 80 is listed twice"}},
		{"cidr", func(c *Config) { c.ExcludeCIDRs = []string{"10.0.0.0"} }, []string{`--exclude-cidrs (excludeCIDRs): "10.0.0.0" is not a CIDR`}},
		{"IPv6 CIDR with only IPv4", func(c *Config) { c.ExcludeCIDRs = []string{"fd00::/8"}; c.IPFamilies = []string{"ipv4"} }, []string{"fd00::/8 is IPv6 but the policy covers only IPv4"}},
		{"families", func(c *Config) { c.IPFamilies = []string{"IPv5"} }, []string{`--ip-families (ipFamilies): "IPv5" is neither IPv4 nor IPv6`}},
		{"no families", func(c *Config) { c.IPFamilies = nil }, []string{"--ip-families (ipFamilies): is empty"}},
		{"backend", func(c *Config) { c.Backend = "nftables" }, []string{`--backend (backend): "nftables": use auto, nft or legacy`}},
		{"resync", func(c *Config) { c.Resync = Duration(time.Millisecond) }, []string{"--resync (resync): 1ms is not in 1s-1h0m0s"}},
		{"sink scheme", func(c *Config) { c.Sink = "http://x:1" }, []string{`--sink (sink): "http://x:1": scheme "http" is none of grpc, grpcs, clickhouse, clickhouses, file`}},
		{"clickhouse sink without a database", func(c *Config) { c.Sink = "clickhouse://ch:8123" }, []string{`names no database`}},
		{"sink port", func(c *Config) { c.Sink = "grpc://classifier" }, []string{"write grpc://HOST:PORT"}},
		{"relative file", func(c *Config) { c.Sink = "file://records.pcapng" }, []string{"three slashes"}},
		{"CA file for a file sink", func(c *Config) { c.SinkCAFile = "/etc/connscope/ca.pem" }, []string{`--sink-ca-file (sinkCAFile): "/etc/connscope/ca.pem": only a grpcs:// or clickhouses:// sink checks a certificate`}},
		{"CA file for a plaintext gRPC sink", func(c *Config) { c.Sink = "grpc://classifier:9443"; c.SinkCAFile = "/ca.pem" }, []string{"only a grpcs:// or clickhouses:// sink checks a certificate"}},
		{"CA file for a plain HTTP ClickHouse sink", func(c *Config) { c.Sink = "clickhouse://ch:8123/connscope"; c.SinkCAFile = "/ca.pem" }, []string{"only a grpcs:// or clickhouses:// sink checks a certificate"}},
		{"queue", func(c *Config) { c.QueueCapacity = 1 }, []string{"--queue-capacity (queueCapacity): 1 is not in 64-4194304 records"}},
		{"metrics address", func(c *Config) { c.MetricsAddr = "9477" }, []string{`--metrics-addr (metricsAddr): "9477": missing port`}},
		{"shutdown", func(c *Config) { c.ShutdownTimeout = 0 }, []string{"--shutdown-timeout (shutdownTimeout): 0s is not in (0, 10m]"}},
		{"policy name", func(c *Config) { c.Policy = "Web" }, []string{`name "Web": use lower-case letters`}},
		{"interface name", func(c *Config) { c.Interfaces = []string{"a very long interface"} }, []string{"interface names are 1-15 characters"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.edit(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

func TestConfigBecomesThePolicy(t *testing.T) {
	c := exampleConfig()
	p, err := c.policy()
	if err != nil {
		t.Fatal(err)
	}
	want := rules.Policy{
		Name: "web", Probability: 0.0001, PacketCap: 10, LabelBit: 3, NFLOGGroup: 5, CopyRange: 128,
		Ports:        []uint16{80, 443},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
		Interfaces:   []string{"eth0", "ens+"},
		Families:     []rules.Family{rules.IPv4, rules.IPv6},
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v\nwant %+v", p, want)
	}
	if n := c.nflogConfig(); n.Group != 5 || n.CopyRange != 128 {
		t.Fatalf("nflog config %+v", n)
	}
}

// parseFlags binds a DefaultConfig to a flag set, parses args and
// resolves the result.
func parseFlags(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	c := DefaultConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return c.Resolve(fs)
}

// TestTheFileIsReadOverTheCommandsDefaults: a command that changes a
// default before AddFlags (standalone: no agent metrics address) keeps it
// when --config names a file without that key, as the flag alone would;
// a file that sets the key, and a flag over that, still win.
func TestTheFileIsReadOverTheCommandsDefaults(t *testing.T) {
	dir := t.TempDir()
	without := filepath.Join(dir, "without.yaml")
	with := filepath.Join(dir, "with.yaml")
	if err := os.WriteFile(without, []byte("probability: 1\nlabelBit: 3\nnflogGroup: 5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(with, []byte("probability: 1\nlabelBit: 3\nnflogGroup: 5\nmetricsAddr: 127.0.0.1:9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	resolve := func(args ...string) Config {
		t.Helper()
		c := DefaultConfig()
		c.MetricsAddr = ""
		c.IPFamilies = []string{"IPv6"}
		fs := pflag.NewFlagSet("standalone", pflag.ContinueOnError)
		c.AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		got, err := c.Resolve(fs)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := resolve("--config", without); got.MetricsAddr != "" || !reflect.DeepEqual(got.IPFamilies, []string{"IPv6"}) || got.LabelBit != 3 {
		t.Errorf("file without metricsAddr and ipFamilies: metricsAddr %q, ipFamilies %v, labelBit %d; want the command's defaults \"\" and [IPv6], and 3 from the file",
			got.MetricsAddr, got.IPFamilies, got.LabelBit)
	}
	if got := resolve("--config", with); got.MetricsAddr != "127.0.0.1:9" {
		t.Errorf("file with metricsAddr: %q, want the file's 127.0.0.1:9", got.MetricsAddr)
	}
	if got := resolve("--config", with, "--metrics-addr", "127.0.0.1:10"); got.MetricsAddr != "127.0.0.1:10" {
		t.Errorf("flag over the file: %q, want the flag's 127.0.0.1:10", got.MetricsAddr)
	}
}

func TestFlagsOverrideTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(exampleYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := parseFlags(t, "--config", path, "--probability", "0.5", "--ports", "22", "--metrics-addr", "", "--resync", "3s")
	if err != nil {
		t.Fatal(err)
	}
	want := exampleConfig()
	want.Probability, want.Ports, want.MetricsAddr, want.Resync = 0.5, []int{22}, "", Duration(3*time.Second)
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}

	// Without --config, flags over the defaults.
	c, err = parseFlags(t, "--probability", "1", "--label-bit", "7", "--nflog-group", "9", "--sink", "grpc://c:1",
		"--ip-families", "ipv6", "--exclude-cidrs", "fd00::/8,fd01::/16")
	if err != nil {
		t.Fatal(err)
	}
	want = DefaultConfig()
	want.Probability, want.LabelBit, want.NFLOGGroup, want.Sink = 1, 7, 9, "grpc://c:1"
	want.IPFamilies, want.ExcludeCIDRs = []string{"ipv6"}, []string{"fd00::/8", "fd01::/16"}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}

	if _, err := parseFlags(t, "--config", filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestNodeNameDefaultsToTheEnvironment(t *testing.T) {
	t.Setenv("NODE_NAME", "from-env")
	if got := DefaultConfig().WithDefaults().NodeName; got != "from-env" {
		t.Errorf("NODE_NAME: got %q", got)
	}
	t.Setenv("NODE_NAME", "")
	host, _ := os.Hostname()
	if got := DefaultConfig().WithDefaults().NodeName; got != host {
		t.Errorf("host name: got %q, want %q", got, host)
	}
	c := DefaultConfig()
	c.NodeName = "set"
	if got := c.WithDefaults().NodeName; got != "set" {
		t.Errorf("set: got %q", got)
	}
}
