package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/dashboard"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/service"
)

func newClassifierCommand() *cobra.Command {
	var (
		cfg                            service.Config
		storeURL, tokenFile, retention string
		logJSON                        bool
		chf                            *clickhouseFlags
	)
	cmd := &cobra.Command{
		Use:   "classifier [flags]",
		Short: "Receive the agents' packet records, classify connections live, serve the Radar-compatible API",
		Long: `classifier receives the node agents' packet records over gRPC (--grpc-addr),
acknowledging each batch only once it is stored, assembles and classifies
connections as they end (a reset, a FIN, the packet cap, or --idle-timeout of
silence), and keeps counts per 15-minute bucket by stage, tag, signature,
node, policy, server port, IP version and the client's country and ASN (from
GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb in --geoip-dir, when there).

It serves on --http-addr Cloudflare Radar's /radar/tcp_resets_timeouts/summary
and /timeseries_groups (same parameters and shapes), /api/v1/ for tags,
signatures, recent anomalous connections and dimensions, /metrics, /healthz,
/readyz, and the dashboard at /.

Agents must present the token in --ingest-token-file (read at start); without
one, any client that reaches the gRPC port may write. With
--ingest-tls-cert-file and --ingest-tls-key-file the gRPC port serves TLS,
and agents push with a grpcs:// sink (--sink-ca-file names the CA when it
is not one the system trusts); otherwise it is plaintext. A restart loses nothing
that was acknowledged: accepted batches are journaled and replayed.`,
		Example: `  connscope classifier --store=sqlite:///var/lib/connscope/connscope.db \
      --ingest-token-file=/var/run/connscope/token --geoip-dir=/var/lib/connscope-geoip
  curl 'localhost:8080/radar/tcp_resets_timeouts/summary?dateRange=1d&location=-US'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if strings.HasPrefix(storeURL, "clickhouse:") || strings.HasPrefix(storeURL, "clickhouses:") {
				ret, err := parseRetention(retention)
				if err != nil {
					return err
				}
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				return runClickHouseClassifier(ctx, cmd, storeURL, chf, flow.Config{IdleTimeout: cfg.IdleTimeout, Hold: cfg.Hold, PacketCap: cfg.PacketCap}, cfg.GeoIPDir, cfg.HTTPAddr, ret, newLogger(cmd, logJSON), dashboard.Handler())
			}
			if cfg.StorePath, err = parseStoreURL(storeURL); err != nil {
				return err
			}
			if chf.caFile != "" {
				return fmt.Errorf("--store-ca-file %s: only a clickhouses:// store checks a certificate, and the store is %q", chf.caFile, storeURL)
			}
			if cfg.Retention, err = parseRetention(retention); err != nil {
				return err
			}
			if tokenFile != "" {
				if cfg.Token, err = service.ReadTokenFile(tokenFile); err != nil {
					return fmt.Errorf("--ingest-token-file: %w", err)
				}
			}
			if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
				return errors.New("--ingest-tls-cert-file and --ingest-tls-key-file go together: give both to serve TLS, or neither")
			}
			if cfg.GeoIPDir != "" {
				if st, err := os.Stat(cfg.GeoIPDir); err != nil || !st.IsDir() {
					return fmt.Errorf("--geoip-dir %s is not a directory: give the directory holding GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb, or leave it out", cfg.GeoIPDir)
				}
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("classifier flags: %w", err)
			}
			cfg.Logger = newLogger(cmd, logJSON)
			cfg.Dashboard = dashboard.Handler()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := service.Start(ctx, cfg)
			if err != nil {
				return err
			}
			return s.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", service.DefaultGRPCAddr, "address of the Ingest gRPC service the agents push to")
	f.StringVar(&cfg.HTTPAddr, "http-addr", service.DefaultHTTPAddr, "address of the HTTP API, metrics, probes and dashboard")
	f.StringVar(&cfg.Policy, "policy", "", `the SamplingPolicy served: batches of another policy are rejected ("" accepts any)`)
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", flow.DefaultIdleTimeout, "silence after which a connection without RST, FIN or cap is judged timed out")
	f.DurationVar(&cfg.Hold, "hold", 0, holdUsage)
	f.IntVar(&cfg.PacketCap, "packet-cap", flow.DefaultPacketCap, "client packets of a connection that count (the agents' cap)")
	f.StringVar(&storeURL, "store", "sqlite:///var/lib/connscope/connscope.db", "where aggregates and the journal are kept: sqlite:///absolute/path.db, clickhouse://host:8123/database, or clickhouses://host:8443/database over HTTPS (the agents insert packets there; replicas classify windows)")
	f.StringVar(&cfg.GeoIPDir, "geoip-dir", "", "directory with GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb (optional; absent means unknown)")
	f.StringVar(&tokenFile, "ingest-token-file", "", "file holding the bearer token agents must present")
	f.StringVar(&cfg.TLSCertFile, "ingest-tls-cert-file", "", "PEM certificate chain for serving Ingest over TLS (agents then use a grpcs:// sink); read again when it changes")
	f.StringVar(&cfg.TLSKeyFile, "ingest-tls-key-file", "", "PEM private key of --ingest-tls-cert-file")
	f.StringVar(&retention, "retention", "30d", "how long buckets and anomalies are kept (e.g. 30d, 12w, 720h)")
	f.IntVar(&cfg.MaxAnomalies, "max-anomalies", aggregate.DefaultMaxAnomalies, "recent anomalous connections kept for drill-down")
	f.DurationVar(&cfg.Grace, "grace", ingest.DefaultGrace, "how far the engine's clock stays behind the wall clock, for the agents' batching delay")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	chf = addClickHouseFlags(f)
	return cmd
}

// parseStoreURL returns the SQLite file of a --store URL.
func parseStoreURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("--store %q: %v; write sqlite:///absolute/path.db", s, err)
	}
	switch u.Scheme {
	case "sqlite":
	default:
		return "", fmt.Errorf("--store %q: scheme %q is not supported; write sqlite:///absolute/path.db, clickhouse://host:8123/database or clickhouses://host:8443/database", s, u.Scheme)
	}
	if u.Host != "" || u.Opaque != "" || !filepath.IsAbs(u.Path) || strings.HasSuffix(u.Path, "/") {
		return "", fmt.Errorf("--store %q: give an absolute file path with three slashes, e.g. sqlite:///var/lib/connscope/connscope.db", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--store %q: no query or fragment: write sqlite:///absolute/path.db", s)
	}
	return filepath.Clean(u.Path), nil
}

// parseRetention reads Nd, Nw or a Go duration.
func parseRetention(s string) (time.Duration, error) {
	bad := fmt.Errorf("--retention %q: write a duration such as 30d, 12w or 720h", s)
	var unit time.Duration
	switch {
	case strings.HasSuffix(s, "d"):
		unit = 24 * time.Hour
	case strings.HasSuffix(s, "w"):
		unit = 7 * 24 * time.Hour
	default:
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, bad
		}
		if d <= 0 {
			return 0, fmt.Errorf("--retention %q must be positive", s)
		}
		return d, nil
	}
	n, err := strconv.Atoi(s[:len(s)-1])
	if err != nil {
		return 0, bad
	}
	if n <= 0 {
		return 0, fmt.Errorf("--retention %q must be positive", s)
	}
	return time.Duration(n) * unit, nil
}
