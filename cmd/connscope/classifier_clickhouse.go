package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/api"
	"github.com/connscope/connscope/classifier/chstore"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/internal/chclient"
)

// clickhouseFlags are the classifier's flags that only a ClickHouse store
// reads.
type clickhouseFlags struct {
	window, guard, delay time.Duration
	parts                int
	replica              string
	caFile               string
}

func addClickHouseFlags(f *pflag.FlagSet) *clickhouseFlags {
	c := &clickhouseFlags{}
	f.DurationVar(&c.window, "window", chstore.DefaultWindow, "with a ClickHouse store: length of the windows of packets queried (all replicas the same)")
	f.DurationVar(&c.guard, "window-guard", chstore.DefaultGuard, "with a ClickHouse store: connections last seen this close to a window's end are carried into the next window")
	f.DurationVar(&c.delay, "window-delay", chstore.DefaultDelay, "with a ClickHouse store: how long after its end a window is queried (the agents' shipping delay)")
	f.IntVar(&c.parts, "window-parts", chstore.DefaultParts, "with a ClickHouse store: parts (shards of connections) a window is classified in, shared by the replicas")
	f.StringVar(&c.replica, "replica", "", "with a ClickHouse store: this replica's name in claims and commits (default $POD_NAME, else the host name)")
	f.StringVar(&c.caFile, "store-ca-file", "", "with a clickhouses:// store: PEM file of the CA certificates ClickHouse's certificate must chain to (default: the system's roots)")
	return c
}

// runClickHouseClassifier is `connscope classifier --store=clickhouse://...`:
// no gRPC ingest (the agents insert into ClickHouse), a classifier replica
// over closed windows, the API and dashboard reading ClickHouse, and
// retention by day partitions.
func runClickHouseClassifier(ctx context.Context, cmd *cobra.Command, storeURL string, chf *clickhouseFlags, fc flow.Config,
	geoDir, httpAddr string, retention time.Duration, logger *slog.Logger, dashboard http.Handler) error {
	cfg, err := chclient.ParseURL(storeURL)
	if err != nil {
		return fmt.Errorf("--store: %w", err)
	}
	if chf.caFile != "" {
		if !cfg.Secure {
			return fmt.Errorf("--store-ca-file %s: the store %q is plain HTTP: use clickhouses://%s/%s (ClickHouse's https_port)", chf.caFile, storeURL, cfg.Addr, cfg.Database)
		}
		if cfg.TLS, err = ship.CAFileTLS(chf.caFile, cfg.Addr); err != nil {
			return fmt.Errorf("--store-ca-file: %w", err)
		}
	}
	cfg.User, cfg.Password = os.Getenv(ship.EnvClickHouseUser), os.Getenv(ship.EnvClickHousePassword)
	cfg.Timeout = 10 * time.Minute
	if _, _, err := net.SplitHostPort(httpAddr); err != nil {
		return fmt.Errorf("HTTP address %q: %v; write host:port or :port", httpAddr, err)
	}
	replica := chf.replica
	if replica == "" {
		replica = os.Getenv("POD_NAME")
	}
	if replica == "" {
		replica, _ = os.Hostname()
	}
	g, err := geo.Open(geoDir)
	if err != nil {
		return err
	}
	kc := chstore.ClassifierConfig{
		Window: chf.window, Guard: chf.guard, Delay: chf.delay, Parts: chf.parts, Replica: replica,
		Flow: fc, Geo: g, Logger: logger,
	}
	if err := kc.Validate(); err != nil {
		return fmt.Errorf("classifier flags: %w", err)
	}
	if cmd.Flags().Changed("grpc-addr") {
		logger.Warn("--grpc-addr is not served with a ClickHouse store: the agents insert into ClickHouse (sink clickhouse://)")
	}

	var st *chstore.Store
	for {
		openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err = chstore.Open(openCtx, cfg)
		cancel()
		if err == nil {
			break
		}
		if strings.HasSuffix(cfg.Addr, ":9000") {
			err = fmt.Errorf("%w (9000 is usually ClickHouse's native port; connscope speaks its HTTP interface, usually 8123)", err)
		}
		logger.Warn("ClickHouse not ready; retrying in 5s", "store", storeURL, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("--store %s: %w", storeURL, err)
		case <-time.After(5 * time.Second):
		}
	}
	defer st.Close()
	k, err := chstore.NewClassifier(st, kc)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           api.New(api.Config{Store: st, Registry: api.NewWindowMetrics(k.Stats), Dashboard: dashboard, Logger: logger}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	lis, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return fmt.Errorf("listen for HTTP on %s: %w", httpAddr, err)
	}
	logger.Info("classifier over ClickHouse", "store", storeURL, "replica", replica, "http", lis.Addr().String(),
		"window", kc.Window, "guard", kc.Guard, "parts", kc.Parts)
	errc := make(chan error, 3)
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	go func() { errc <- k.Run(ctx) }()
	go func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			if n, err := st.Retain(ctx, time.Now().Add(-retention)); err != nil {
				logger.Warn("retention", "err", err)
			} else if n > 0 {
				logger.Info("retention: dropped day partitions", "partitions", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shut)
	return err
}
