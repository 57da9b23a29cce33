package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/connscope/connscope/agent"
	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/dashboard"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/service"
)

// Standalone composes the two processes a cluster runs, unchanged: the
// classifier service listens for gRPC on 127.0.0.1 (a port the kernel
// picks) with a bearer token made at start, and the agent ships to it
// with its ordinary gRPC sink. The agent package offers no in-process
// sink, and going through gRPC keeps one code path, its acknowledgements
// and its journal, for both modes; loopback costs little at sampling
// rates.

// standaloneSinkFlags are the agent's flags that standalone refuses (and
// hides): its agent ships to its own classifier, in the process.
var standaloneSinkFlags = []string{"sink", "sink-token-file", "sink-ca-file"}

func newStandaloneCommand() *cobra.Command {
	acfg := agent.DefaultConfig()
	acfg.MetricsAddr = "" // the classifier serves /metrics
	var (
		scfg                service.Config
		storeURL, retention string
		logJSON             bool
	)
	cmd := &cobra.Command{
		Use:   "standalone [flags]",
		Short: "Run the agent and the classifier in one process, on one Linux host without Kubernetes",
		Long: `standalone samples new TCP connections on this host as 'connscope agent'
does (the same sampling flags: iptables rules of its own in the mangle table,
an NFLOG group) and classifies them as 'connscope classifier' does, in one
process: the agent ships over gRPC on 127.0.0.1, on a port the kernel picks,
with a token made at start, to the classifier, which serves the
Radar-compatible API, /metrics and the dashboard on --http-addr.

Every flag is checked before anything changes on the host. On SIGTERM or
SIGINT the agent removes its rules and ships what it holds, then the
classifier commits and stops.`,
		Example: `  connscope standalone --probability 0.01 --label-bit 3 --nflog-group 5 --ports 80,443 \
      --store sqlite:///var/lib/connscope/connscope.db --http-addr 127.0.0.1:8080
  curl 'localhost:8080/radar/tcp_resets_timeouts/summary?dateRange=1d'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, name := range standaloneSinkFlags {
				if cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s: standalone ships to its own classifier; leave it out", name)
				}
			}
			ac, err := acfg.Resolve(cmd.Flags())
			if err != nil {
				return err
			}
			if ac.Sink != "" || ac.SinkTokenFile != "" || ac.SinkCAFile != "" {
				return errors.New("--config: standalone ships to its own classifier; remove sink, sinkTokenFile and sinkCAFile from the file")
			}
			if scfg.StorePath, err = parseStoreURL(storeURL); err != nil {
				return err
			}
			if scfg.Retention, err = parseRetention(retention); err != nil {
				return err
			}
			if scfg.GeoIPDir != "" {
				if st, err := os.Stat(scfg.GeoIPDir); err != nil || !st.IsDir() {
					return fmt.Errorf("--geoip-dir %s is not a directory: give the directory holding GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb, or leave it out", scfg.GeoIPDir)
				}
			}
			scfg.GRPCAddr = "127.0.0.1:0"
			scfg.Policy = ac.Policy
			scfg.PacketCap = ac.PacketCap
			if err := scfg.Validate(); err != nil {
				return fmt.Errorf("standalone flags: %w", err)
			}
			// Check the agent's settings with a stand-in sink: the real
			// one is known once the classifier listens.
			ac.Sink = "grpc://127.0.0.1:1"
			if _, err := agent.New(ac, agent.Options{}); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runStandalone(ctx, ac, scfg, newLogger(cmd, logJSON))
		},
	}
	f := cmd.Flags()
	acfg.AddFlags(f)
	for _, name := range standaloneSinkFlags {
		_ = f.MarkHidden(name)
	}
	f.StringVar(&scfg.HTTPAddr, "http-addr", "127.0.0.1:8080", "address of the HTTP API, metrics, probes and dashboard")
	f.DurationVar(&scfg.IdleTimeout, "idle-timeout", flow.DefaultIdleTimeout, "silence after which a connection without RST, FIN or cap is judged timed out")
	f.DurationVar(&scfg.Hold, "hold", 0, holdUsage)
	f.StringVar(&storeURL, "store", "sqlite:///var/lib/connscope/connscope.db", "where aggregates and the journal are kept: sqlite:///absolute/path.db")
	f.StringVar(&scfg.GeoIPDir, "geoip-dir", "", "directory with GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb (optional; absent means unknown)")
	f.StringVar(&retention, "retention", "30d", "how long buckets and anomalies are kept (e.g. 30d, 12w, 720h)")
	f.IntVar(&scfg.MaxAnomalies, "max-anomalies", aggregate.DefaultMaxAnomalies, "recent anomalous connections kept for drill-down")
	f.DurationVar(&scfg.Grace, "grace", ingest.DefaultGrace, "how far the engine's clock stays behind the wall clock, for the agent's batching delay")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	return cmd
}

// runStandalone starts the classifier, then the agent shipping to it,
// until ctx ends; then it stops the agent first (rules removed, queue
// flushed into the classifier) and the classifier last. ac and sc are
// validated.
func runStandalone(ctx context.Context, ac agent.Config, sc service.Config, log *slog.Logger) error {
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("make the ingest token: %w", err)
	}
	sc.Token = hex.EncodeToString(tok)
	dir, err := os.MkdirTemp("", "connscope-standalone-")
	if err != nil {
		return fmt.Errorf("a folder for the ingest token: %w", err)
	}
	defer os.RemoveAll(dir)
	ac.SinkTokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(ac.SinkTokenFile, []byte(sc.Token), 0o600); err != nil {
		return fmt.Errorf("write the ingest token: %w", err)
	}

	sc.Logger = log.With("component", "classifier")
	sc.Dashboard = dashboard.Handler()
	// The classifier outlives the agent: it must take the agent's last
	// batches after ctx ends.
	svcCtx, stopSvc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSvc()
	svc, err := service.Start(svcCtx, sc)
	if err != nil {
		return err
	}
	ac.Sink = "grpc://" + svc.GRPCAddr()
	a, err := agent.New(ac, agent.Options{Logger: log.With("component", "agent")})
	if err != nil {
		stopSvc()
		return errors.Join(err, svc.Run(svcCtx))
	}
	svcDone := make(chan error, 1)
	go func() { svcDone <- svc.Run(svcCtx) }()

	agentCtx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	log.Info("standalone running", "http", svc.HTTPAddr(), "grpc", svc.GRPCAddr(), "probability", ac.Probability)

	var agentErr, svcErr error
	select {
	case agentErr = <-agentDone:
		stopSvc()
		svcErr = <-svcDone
	case svcErr = <-svcDone:
		// The classifier failed: stop the agent, which removes its rules.
		stopAgent()
		agentErr = <-agentDone
	}
	if agentErr != nil {
		agentErr = fmt.Errorf("agent: %w", agentErr)
	}
	if svcErr != nil {
		svcErr = fmt.Errorf("classifier: %w", svcErr)
	}
	return errors.Join(agentErr, svcErr)
}
