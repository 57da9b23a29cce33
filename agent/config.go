package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/connscope/connscope/agent/nflog"
	"github.com/connscope/connscope/agent/rules"
	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/internal/chclient"
)

// Defaults of the settings that have one. Probability, label bit, NFLOG
// group and sink have none: they are decisions (how much to sample, which
// label bit and group no other software on the node uses, where records
// go), so the agent refuses to start without them.
const (
	DefaultPolicy           = "default"
	DefaultPacketCap        = 10
	DefaultCopyRange        = 128
	DefaultResync           = 10 * time.Second
	DefaultQueueCapacity    = 4096
	DefaultMetricsAddr      = ":9477"
	DefaultShutdownTimeout  = 10 * time.Second
	DefaultSinkUnreadyAfter = time.Minute
)

// Limits the configuration is checked against, besides those of
// rules.Policy.
const (
	MinResync        = time.Second
	MaxResync        = time.Hour
	MinQueueCapacity = 64
	// MaxQueueCapacity bounds the queue's memory: a record is about 100
	// bytes, so 4 Mi records stay under half a GiB.
	MaxQueueCapacity = 4 << 20
)

// unsetProbability and unsetInt mark the settings that have no default
// (probability, label bit, NFLOG group), so that a missing setting is told
// from any value a user plausibly gives (0 or -1 among them, which get
// their own messages).
const (
	unsetProbability = -math.MaxFloat64
	unsetInt         = math.MinInt32
)

// Config is everything an agent runs with. It comes from flags
// (AddFlags), from a YAML or JSON file (LoadFile) whose keys are the JSON
// names below, or both: Resolve lets flags given on the command line
// override the file. The controller renders the same structure into a
// ConfigMap for the DaemonSet.
//
// Start from DefaultConfig: a zero Config is not valid.
type Config struct {
	// policy is the name of the sampling policy (--policy), used in the
	// chain name and rule comments: lower-case letters, digits, '-' and '.'.
	Policy string `json:"policy"`
	// probability that a new TCP connection is sampled, in (0, 1]
	// (--probability). Required.
	Probability float64 `json:"probability"`
	// packetCap is how many client packets of a sampled connection are
	// logged, 1 to 64 (--packet-cap). Default 10, as the seed.
	PacketCap int `json:"packetCap"`
	// labelBit is the conntrack label bit marking sampled connections,
	// 0 to 127, one no other software on the node uses (--label-bit).
	// Required.
	LabelBit int `json:"labelBit"`
	// nflogGroup is the NFLOG group the rules log to and the agent reads,
	// 0 to 65535, one no other reader binds (--nflog-group). Required.
	NFLOGGroup int `json:"nflogGroup"`
	// copyRange is how many bytes of each packet the kernel copies to the
	// agent, from the IP header on: enough for the headers only (--copy-range).
	// Default 128; 60 to 512.
	CopyRange int `json:"copyRange"`
	// ports are the server ports to sample, at most 15; empty means all
	// (--ports).
	Ports []int `json:"ports,omitempty"`
	// excludeCIDRs are client networks never sampled (--exclude-cidrs).
	ExcludeCIDRs []string `json:"excludeCIDRs,omitempty"`
	// interfaces are the input interfaces to sample on; empty means all; a
	// trailing '+' is a wildcard (--interfaces).
	Interfaces []string `json:"interfaces,omitempty"`
	// ipFamilies are the address families to sample: IPv4, IPv6 or both
	// (--ip-families). Default both.
	IPFamilies []string `json:"ipFamilies"`
	// backend is the iptables backend: auto (as the host uses), nft or
	// legacy (--backend). Default auto.
	Backend string `json:"backend"`
	// resync is how often the rules are checked and restored if someone
	// removed them (--resync). Default 10s; 1s to 1h.
	Resync Duration `json:"resync"`
	// sink is where records go: grpc://host:port or grpcs://host:port (the
	// classifier), or file:///absolute/path.pcapng (--sink). Required.
	Sink string `json:"sink"`
	// sinkTokenFile is a file holding the bearer token sent to a gRPC sink,
	// re-read when it changes (--sink-token-file). Optional.
	SinkTokenFile string `json:"sinkTokenFile,omitempty"`
	// sinkCAFile is a PEM file of the CA certificates that a grpcs:// or
	// clickhouses:// sink's certificate must chain to, instead of the
	// system's roots
	// (--sink-ca-file). Optional; read again when it changes, at the next
	// reconnection.
	SinkCAFile string `json:"sinkCAFile,omitempty"`
	// queueCapacity is how many records wait for the sink at most, the
	// batch being sent included (--queue-capacity); while it is full the
	// reader waits and the NFLOG socket's receive buffer (16 MiB, about
	// 60000 packets in full kernel batches) holds what comes. A record
	// takes about 90 bytes. Default 4096: a queue that stays in the
	// processor's cache (with 65536 the agent spent 14 % more CPU per
	// packet under a small CPU limit).
	QueueCapacity int `json:"queueCapacity"`
	// nodeName names this node in what the agent ships (--node-name).
	// Default: $NODE_NAME, else the host name.
	NodeName string `json:"nodeName,omitempty"`
	// metricsAddr is where /metrics, /healthz and /readyz are served
	// (--metrics-addr); "" turns the server off. Default ":9477".
	MetricsAddr string `json:"metricsAddr"`
	// sinkUnreadyAfter is how long the sink may fail without a success
	// before /readyz reports not ready (--sink-unready-after). Default 1m.
	SinkUnreadyAfter Duration `json:"sinkUnreadyAfter"`
	// shutdownTimeout bounds the time spent, after SIGTERM, flushing the
	// queue to the sink (--shutdown-timeout). Default 10s.
	ShutdownTimeout Duration `json:"shutdownTimeout"`
}

// Duration is a time.Duration written as Go writes it ("10s", "1m30s")
// in configuration files.
type Duration time.Duration

// MarshalText writes the duration as "10s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads a duration such as "10s" or "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 10s or 1m30s", b)
	}
	*d = Duration(v)
	return nil
}

// DefaultConfig returns the configuration with every default filled in and
// the required settings unset.
func DefaultConfig() Config {
	return Config{
		Policy:           DefaultPolicy,
		Probability:      unsetProbability,
		PacketCap:        DefaultPacketCap,
		LabelBit:         unsetInt,
		NFLOGGroup:       unsetInt,
		CopyRange:        DefaultCopyRange,
		IPFamilies:       []string{"IPv4", "IPv6"},
		Backend:          string(rules.BackendAuto),
		Resync:           Duration(DefaultResync),
		QueueCapacity:    DefaultQueueCapacity,
		MetricsAddr:      DefaultMetricsAddr,
		SinkUnreadyAfter: Duration(DefaultSinkUnreadyAfter),
		ShutdownTimeout:  Duration(DefaultShutdownTimeout),
	}
}

// ConfigFlag is the flag that names a configuration file.
const ConfigFlag = "config"

// AddFlags defines one flag per setting on fs, bound to c: call it with a
// DefaultConfig so that the flags show the defaults. It also defines
// --config, whose value Resolve reads.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.String(ConfigFlag, "", "YAML or JSON file with the settings below (keys as in the file format, e.g. packetCap); flags given on the command line override it")
	fs.StringVar(&c.Policy, "policy", c.Policy, "name of the sampling policy: lower-case letters, digits, '-' and '.'")
	fs.Float64Var(&c.Probability, "probability", c.Probability, "probability that a new TCP connection is sampled, in (0, 1], e.g. 0.0001 (required)")
	fs.IntVar(&c.PacketCap, "packet-cap", c.PacketCap, fmt.Sprintf("client packets logged per sampled connection, 1-%d", rules.MaxPacketCap))
	fs.IntVar(&c.LabelBit, "label-bit", c.LabelBit, fmt.Sprintf("conntrack label bit marking sampled connections, 0-%d, unused by other software on the node (required)", rules.MaxLabelBit))
	fs.IntVar(&c.NFLOGGroup, "nflog-group", c.NFLOGGroup, "NFLOG group the rules log to and the agent reads, 0-65535, unused by other readers (required)")
	// The required settings start unset; help prints no default for a
	// flag whose DefValue is the zero value (DefValue is read by help only).
	for name, isUnset := range map[string]bool{
		"probability": c.Probability == unsetProbability,
		"label-bit":   c.LabelBit == unsetInt,
		"nflog-group": c.NFLOGGroup == unsetInt,
	} {
		if f := fs.Lookup(name); f != nil && isUnset {
			f.DefValue = "0"
		}
	}
	fs.IntVar(&c.CopyRange, "copy-range", c.CopyRange, fmt.Sprintf("bytes of each packet copied from the kernel, headers only, %d-%d (below 100, an IPv6 SYN's TCP options are cut, which the scanner tags read)", rules.MinCopyRange, rules.MaxCopyRange))
	fs.IntSliceVar(&c.Ports, "ports", c.Ports, "server ports to sample, comma-separated, at most 15 (default all)")
	fs.StringSliceVar(&c.ExcludeCIDRs, "exclude-cidrs", c.ExcludeCIDRs, "client networks never sampled, comma-separated CIDRs")
	fs.StringSliceVar(&c.Interfaces, "interfaces", c.Interfaces, "input interfaces to sample on, comma-separated, '+' suffix as wildcard (default all)")
	fs.StringSliceVar(&c.IPFamilies, "ip-families", c.IPFamilies, "address families to sample: IPv4, IPv6 or both")
	fs.StringVar(&c.Backend, "backend", c.Backend, "iptables backend: auto (as the host uses), nft or legacy")
	fs.DurationVar((*time.Duration)(&c.Resync), "resync", time.Duration(c.Resync), "how often the rules are checked and restored if removed")
	fs.StringVar(&c.Sink, "sink", c.Sink, "where records go: grpc://HOST:PORT, grpcs://HOST:PORT, clickhouse://HOST:8123/DATABASE, clickhouses://HOST:8443/DATABASE (HTTPS) or file:///PATH.pcapng (required)")
	fs.StringVar(&c.SinkTokenFile, "sink-token-file", c.SinkTokenFile, "file holding the bearer token sent to a gRPC sink")
	fs.StringVar(&c.SinkCAFile, "sink-ca-file", c.SinkCAFile, "PEM file of the CA certificates a grpcs:// or clickhouses:// sink's certificate must chain to (default: the system's roots)")
	fs.IntVar(&c.QueueCapacity, "queue-capacity", c.QueueCapacity, "records waiting for the sink at most; while they are, the NFLOG socket's receive buffer holds what comes, and what it cannot hold is lost and counted")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "name of this node in shipped records (default $NODE_NAME, else the host name)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, `address serving /metrics, /healthz and /readyz; "" turns it off`)
	fs.DurationVar((*time.Duration)(&c.SinkUnreadyAfter), "sink-unready-after", time.Duration(c.SinkUnreadyAfter), "how long the sink may fail before /readyz reports not ready")
	fs.DurationVar((*time.Duration)(&c.ShutdownTimeout), "shutdown-timeout", time.Duration(c.ShutdownTimeout), "longest time spent flushing the queue to the sink on shutdown")
}

// Resolve returns the configuration that fs's flags, parsed, describe:
// when --config names a file, its settings over the command's defaults,
// and then every flag given on the command line over those. c is the
// Config that AddFlags bound to fs. The command's defaults are its
// flags' defaults, which are DefaultConfig's unless the command changed
// them before AddFlags (standalone has no agent metrics address): a key
// the file leaves out keeps the command's default, as the flag would.
// Only flags are read; nothing else is touched.
func (c *Config) Resolve(fs *pflag.FlagSet) (Config, error) {
	path, err := fs.GetString(ConfigFlag)
	if err != nil || path == "" {
		return *c, nil
	}
	base, err := flagDefaults(fs)
	if err != nil {
		return Config{}, err
	}
	fromFile, err := loadFileOver(base, path)
	if err != nil {
		return Config{}, err
	}
	// Bind a second flag set to the file's configuration and replay on it
	// the flags the command line set.
	over := pflag.NewFlagSet("override", pflag.ContinueOnError)
	fromFile.AddFlags(over)
	fs.Visit(func(f *pflag.Flag) {
		if err != nil || f.Name == ConfigFlag {
			return
		}
		o := over.Lookup(f.Name)
		if o == nil {
			return // a flag of the command, not a setting
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			err = o.Value.(pflag.SliceValue).Replace(sv.GetSlice())
		} else {
			err = o.Value.Set(f.Value.String())
		}
		if err != nil {
			err = fmt.Errorf("--%s: %w", f.Name, err)
		}
	})
	if err != nil {
		return Config{}, err
	}
	return fromFile, nil
}

// flagDefaults returns DefaultConfig with the settings whose flag in fs
// has another default than DefaultConfig's set to that default.
func flagDefaults(fs *pflag.FlagSet) (Config, error) {
	base := DefaultConfig()
	bound := pflag.NewFlagSet("defaults", pflag.ContinueOnError)
	base.AddFlags(bound)
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		b := bound.Lookup(f.Name)
		if err != nil || b == nil || f.Name == ConfigFlag || b.DefValue == f.DefValue {
			return
		}
		if sv, ok := b.Value.(pflag.SliceValue); ok {
			var items []string
			if d := strings.Trim(f.DefValue, "[]"); d != "" {
				items = strings.Split(d, ",")
			}
			err = sv.Replace(items)
		} else {
			err = b.Value.Set(f.DefValue)
		}
		if err != nil {
			err = fmt.Errorf("the default of --%s, %q: %w", f.Name, f.DefValue, err)
		}
	})
	return base, err
}

// LoadFile reads a configuration file over DefaultConfig. A file whose
// first non-blank character is '{' is JSON; anything else is read as YAML
// (the flat subset that ParseYAML describes). Unknown keys are errors.
func LoadFile(path string) (Config, error) { return loadFileOver(DefaultConfig(), path) }

// loadFileOver reads a configuration file over c.
func loadFileOver(c Config, path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("--config: %w", err)
	}
	c, err = parseConfigOver(c, b)
	if err != nil {
		return Config{}, fmt.Errorf("--config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig reads a configuration in JSON or YAML over DefaultConfig.
func ParseConfig(b []byte) (Config, error) { return parseConfigOver(DefaultConfig(), b) }

// parseConfigOver reads a configuration in JSON or YAML over c.
func parseConfigOver(c Config, b []byte) (Config, error) {
	js := b
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		var err error
		if js, err = yamlToJSON(b); err != nil {
			return Config{}, err
		}
	}
	if err := checkKeys(js); err != nil {
		return Config{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, explainJSON(err)
	}
	if dec.More() {
		return Config{}, errors.New("more than one document in the file")
	}
	return c, nil
}

// checkKeys refuses a key that is not exactly one of Config's (encoding/json
// would take "PacketCap" or "packetcap" for packetCap, where the YAML reader
// and the documentation say keys are case-sensitive), and names the key of
// a duration that does not parse, which encoding/json's error (from
// Duration.UnmarshalText) does not. Anything else wrong is left to the
// strict decoding.
func checkKeys(js []byte) error {
	var m map[string]json.RawMessage
	if json.Unmarshal(js, &m) != nil {
		return nil
	}
	if key := repeatedKey(js); key != "" {
		return fmt.Errorf("key %s given twice", key)
	}
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	slices.Sort(keys) // the first wrong key in a stable order
	for _, key := range keys {
		typ, known := fieldTypes[key]
		if !known {
			return errors.New(unknownKey(key))
		}
		var text string
		if typ != durationType || json.Unmarshal(m[key], &text) != nil {
			continue
		}
		if _, err := time.ParseDuration(text); err != nil {
			return fmt.Errorf("%s: %q is not a duration such as 10s or 1m30s", key, text)
		}
	}
	return nil
}

// repeatedKey returns a key of the top-level JSON object js that appears
// more than once (encoding/json would keep the last silently, where the
// YAML reader refuses it), or "".
func repeatedKey(js []byte) string {
	dec := json.NewDecoder(bytes.NewReader(js))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := t.(string)
		if seen[key] {
			return key
		}
		seen[key] = true
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return ""
		}
	}
	return ""
}

// explainJSON rewrites encoding/json's errors to name the key.
func explainJSON(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Errorf("%s: a %s cannot be read as %s", te.Field, te.Value, typeName(te.Type.String()))
	}
	if m := strings.TrimPrefix(err.Error(), "json: unknown field "); m != err.Error() {
		if key, uerr := strconv.Unquote(m); uerr == nil {
			return errors.New(unknownKey(key))
		}
		return fmt.Errorf("unknown key %s", m)
	}
	return err
}

func typeName(t string) string {
	switch t {
	case "int":
		return "a whole number"
	case "float64":
		return "a number"
	case "string", "agent.Duration":
		return "a string"
	case "[]int":
		return "a list of numbers"
	case "[]string":
		return "a list of strings"
	}
	return t
}

// WithDefaults fills in the settings that default from the environment:
// the node name.
func (c Config) WithDefaults() Config {
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	return c
}

// flagOf names a setting by its flag and file key, for messages.
func flagOf(flag, key string) string { return fmt.Sprintf("--%s (%s)", flag, key) }

// Validate reports every problem of the configuration at once, each
// naming the flag and the file key, so that nothing reaches netfilter
// half-checked. It reads no file and runs no program.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", flagOf(flag, key), fmt.Sprintf(format, args...)))
	}

	if c.Policy == "" {
		bad("policy", "policy", "is empty: name the policy, e.g. default")
	}
	switch p := c.Probability; {
	case p == unsetProbability:
		bad("probability", "probability", "is required: the share of new TCP connections to sample, in (0, 1], e.g. 0.0001")
	case p == 0:
		bad("probability", "probability", "0 is not in (0, 1]: a probability of 0 would never sample; give the share of new TCP connections to sample, e.g. 0.0001")
	case math.IsNaN(p) || p < 0 || p > 1:
		bad("probability", "probability", "%v is not in (0, 1]", p)
	case p < 1.0/(1<<32):
		bad("probability", "probability", "%v is below 2^-32 and rounds to 0 in the kernel's 31-bit fixed point (the least it draws is 2^-31): it would never sample", p)
	}
	if c.PacketCap < 1 || c.PacketCap > rules.MaxPacketCap {
		bad("packet-cap", "packetCap", "%d is not in 1-%d", c.PacketCap, rules.MaxPacketCap)
	}
	switch {
	case c.LabelBit == unsetInt:
		bad("label-bit", "labelBit", "is required: a conntrack label bit 0-%d that no other software on the node uses", rules.MaxLabelBit)
	case c.LabelBit < 0 || c.LabelBit > rules.MaxLabelBit:
		bad("label-bit", "labelBit", "%d is not in 0-%d (conntrack labels have 128 bits)", c.LabelBit, rules.MaxLabelBit)
	}
	switch {
	case c.NFLOGGroup == unsetInt:
		bad("nflog-group", "nflogGroup", "is required: an NFLOG group 0-65535 that no other reader on the node binds")
	case c.NFLOGGroup < 0 || c.NFLOGGroup > math.MaxUint16:
		bad("nflog-group", "nflogGroup", "%d is not in 0-65535", c.NFLOGGroup)
	}
	if c.CopyRange < rules.MinCopyRange || c.CopyRange > rules.MaxCopyRange {
		bad("copy-range", "copyRange", "%d is not in %d-%d bytes (128 holds every header; payload is never needed)", c.CopyRange, rules.MinCopyRange, rules.MaxCopyRange)
	}
	if len(c.Ports) > rules.MaxPorts {
		bad("ports", "ports", "%d given, at most %d", len(c.Ports), rules.MaxPorts)
	}
	for _, p := range c.Ports {
		if p < 1 || p > math.MaxUint16 {
			bad("ports", "ports", "%d is not a TCP port (1-65535)", p)
		}
	}
	for _, s := range c.ExcludeCIDRs {
		if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
			bad("exclude-cidrs", "excludeCIDRs", "%q is not a CIDR such as 10.0.0.0/8 or fd00::/8", s)
		}
	}
	if _, err := c.families(); err != nil {
		bad("ip-families", "ipFamilies", "%v", err)
	}
	if _, err := rules.ParseBackend(c.Backend); err != nil {
		bad("backend", "backend", "%q: use auto, nft or legacy", c.Backend)
	}
	if r := time.Duration(c.Resync); r < MinResync || r > MaxResync {
		bad("resync", "resync", "%v is not in %v-%v", r, MinResync, MaxResync)
	}
	if err := checkSinkURL(c.Sink); err != nil {
		bad("sink", "sink", "%v", err)
	}
	if c.SinkCAFile != "" {
		if u, err := url.Parse(c.Sink); err == nil && u.Scheme != "grpcs" && u.Scheme != "clickhouses" {
			bad("sink-ca-file", "sinkCAFile", "%q: only a grpcs:// or clickhouses:// sink checks a certificate, and the sink is %q", c.SinkCAFile, c.Sink)
		}
	}
	if c.QueueCapacity < MinQueueCapacity || c.QueueCapacity > MaxQueueCapacity {
		bad("queue-capacity", "queueCapacity", "%d is not in %d-%d records", c.QueueCapacity, MinQueueCapacity, MaxQueueCapacity)
	}
	if c.MetricsAddr != "" {
		if _, port, err := splitHostPort(c.MetricsAddr); err != nil {
			bad("metrics-addr", "metricsAddr", "%q: %v (write HOST:PORT or :PORT, or \"\" to turn the server off)", c.MetricsAddr, err)
		} else if port == "" {
			bad("metrics-addr", "metricsAddr", "%q has no port", c.MetricsAddr)
		}
	}
	if d := time.Duration(c.SinkUnreadyAfter); d <= 0 {
		bad("sink-unready-after", "sinkUnreadyAfter", "%v must be positive", d)
	}
	if d := time.Duration(c.ShutdownTimeout); d <= 0 || d > 10*time.Minute {
		bad("shutdown-timeout", "shutdownTimeout", "%v is not in (0, 10m]", d)
	}

	if len(errs) == 0 {
		// The field checks above mirror rules.Policy's; this catches what
		// only the policy knows (name syntax, duplicates, interface names).
		p, err := c.policy()
		if err == nil {
			err = p.Validate()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return &ConfigError{Problems: errs}
}

// checkFiles reads the files the configuration names, which Validate does
// not: a gRPC sink's token file must be readable and hold a token, or
// every send would fail while the rules sample for nothing. The token is
// read again at each reconnection, so a later rotation is picked up.
func (c Config) checkFiles() error {
	if c.SinkCAFile != "" {
		if err := ship.CheckCAFile(c.SinkCAFile); err != nil {
			return fmt.Errorf("%s %s: %w", flagOf("sink-ca-file", "sinkCAFile"), c.SinkCAFile, err)
		}
	}
	if c.SinkTokenFile == "" {
		return nil
	}
	if u, err := url.Parse(c.Sink); err != nil || (u.Scheme != "grpc" && u.Scheme != "grpcs") {
		return nil // only gRPC sinks send the token
	}
	if _, err := ship.ReadTokenFile(c.SinkTokenFile); err != nil {
		return fmt.Errorf("%s %s: %w (give a readable file holding the classifier's bearer token)",
			flagOf("sink-token-file", "sinkTokenFile"), c.SinkTokenFile, err)
	}
	return nil
}

// ConfigError lists every problem Validate found.
type ConfigError struct {
	Problems []error
}

func (e *ConfigError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	if len(msgs) == 1 {
		return "invalid agent configuration: " + msgs[0]
	}
	return "invalid agent configuration:\n  " + strings.Join(msgs, "\n  ")
}

// Unwrap lets errors.Is and errors.As look at each problem.
func (e *ConfigError) Unwrap() []error { return e.Problems }

func splitHostPort(addr string) (string, string, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", "", errors.New("missing port")
	}
	host, port := addr[:i], addr[i+1:]
	if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") {
		return "", "", errors.New("unbalanced brackets")
	}
	for _, ch := range port {
		if ch < '0' || ch > '9' {
			return "", "", fmt.Errorf("port %q is not a number", port)
		}
	}
	return host, port, nil
}

// checkSinkURL checks the sink's URL syntax; the sink package opens it.
func checkSinkURL(raw string) error {
	if raw == "" {
		return errors.New("is required: grpc://HOST:PORT or grpcs://HOST:PORT for the classifier, or file:///PATH.pcapng")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", raw, err)
	}
	switch u.Scheme {
	case "grpc", "grpcs":
		if u.Host == "" || u.Port() == "" || u.Hostname() == "" {
			return fmt.Errorf("%q: write %s://HOST:PORT", raw, u.Scheme)
		}
		if u.Path != "" && u.Path != "/" {
			return fmt.Errorf("%q: a gRPC sink has no path", raw)
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return fmt.Errorf("%q: a file sink is on this host: write file:///ABSOLUTE/PATH.pcapng (three slashes)", raw)
		}
		if !filepath.IsAbs(u.Path) {
			return fmt.Errorf("%q: the path must be absolute: file:///ABSOLUTE/PATH.pcapng", raw)
		}
	case "clickhouse", "clickhouses":
		if _, err := chclient.ParseURL(raw); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%q: scheme %q is none of grpc, grpcs, clickhouse, clickhouses, file", raw, u.Scheme)
	}
	return nil
}

// families reads IPFamilies: IPv4, IPv6, ipv4, 4, ...
func (c Config) families() ([]rules.Family, error) {
	if len(c.IPFamilies) == 0 {
		return nil, errors.New("is empty: list IPv4, IPv6 or both")
	}
	var out []rules.Family
	for _, s := range c.IPFamilies {
		var f rules.Family
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "ipv4", "4", "v4":
			f = rules.IPv4
		case "ipv6", "6", "v6":
			f = rules.IPv6
		default:
			return nil, fmt.Errorf("%q is neither IPv4 nor IPv6", s)
		}
		for _, g := range out {
			if g == f {
				return nil, fmt.Errorf("%v is listed twice", f)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

// policy converts the configuration to the rules package's Policy. Call
// it after Validate.
func (c Config) policy() (rules.Policy, error) {
	fams, err := c.families()
	if err != nil {
		return rules.Policy{}, err
	}
	p := rules.Policy{
		Name:        c.Policy,
		Probability: c.Probability,
		PacketCap:   c.PacketCap,
		LabelBit:    c.LabelBit,
		NFLOGGroup:  uint16(c.NFLOGGroup),
		CopyRange:   uint16(c.CopyRange),
		Interfaces:  c.Interfaces,
		Families:    fams,
	}
	for _, port := range c.Ports {
		p.Ports = append(p.Ports, uint16(port))
	}
	for _, s := range c.ExcludeCIDRs {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return rules.Policy{}, err
		}
		p.ExcludeCIDRs = append(p.ExcludeCIDRs, pfx)
	}
	return p, nil
}

// nflogConfig is the NFLOG reader's configuration.
func (c Config) nflogConfig() nflog.Config {
	return nflog.Config{Group: uint16(c.NFLOGGroup), CopyRange: uint16(c.CopyRange)}
}
