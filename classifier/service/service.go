// Package service runs the classifier as one process: the store, the
// GeoIP databases, the ingest gRPC server with its live engine, the HTTP
// API (with the dashboard) and retention, started together and stopped
// together. `connscope classifier` is a thin command over it.
//
// Shutdown (the context ends): ingest stops taking batches (one being
// accepted finishes) and the agents' streams close, the aggregates of
// finished connections are committed, the HTTP server drains (for at most
// ShutdownTimeout), and the store closes. Connections still open stay in the journal and are
// replayed at the next start.
//
// It does not define the protocol, the aggregates or the API; it wires
// the packages that do.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/connscope/connscope/classifier/aggregate"
	"github.com/connscope/connscope/classifier/api"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/classifier/ingest"
	"github.com/connscope/connscope/classifier/store"
)

// Defaults.
const (
	DefaultGRPCAddr        = ":9443"
	DefaultHTTPAddr        = ":8080"
	DefaultRetention       = 30 * 24 * time.Hour
	DefaultShutdownTimeout = 10 * time.Second
)

// Config configures the service.
type Config struct {
	// GRPCAddr is where agents push (host:port); HTTPAddr serves the API.
	GRPCAddr, HTTPAddr string
	// Policy is the SamplingPolicy served ("" accepts any).
	Policy string
	// StorePath is the SQLite database file.
	StorePath string
	// GeoIPDir holds GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb ("" or
	// missing files: countries and ASNs are unknown).
	GeoIPDir string
	// Token is the agents' bearer token ("" accepts any stream).
	Token string
	// TLSCertFile and TLSKeyFile, both or neither, make the Ingest service
	// serve TLS (agents push with a grpcs:// sink) with the certificate
	// chain and private key in these PEM files, read again when they
	// change. Neither: plaintext gRPC.
	TLSCertFile, TLSKeyFile string
	// IdleTimeout, Hold and PacketCap are the method's (flow.Config).
	IdleTimeout time.Duration
	Hold        time.Duration
	PacketCap   int
	// Retention is how long buckets and anomalies are kept.
	Retention time.Duration
	// Grace keeps the engine's clock behind the wall clock (ingest).
	Grace time.Duration
	// Tick is how often aggregates are committed (ingest).
	Tick time.Duration
	// MaxAnomalies bounds the recent anomalous connections kept.
	MaxAnomalies int
	// ShutdownTimeout bounds the HTTP server's drain at shutdown.
	ShutdownTimeout time.Duration
	// Dashboard is served at "/" when set.
	Dashboard http.Handler
	// Logger logs; nil discards.
	Logger *slog.Logger
}

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.GRPCAddr == "" {
		c.GRPCAddr = DefaultGRPCAddr
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.MaxAnomalies == 0 {
		c.MaxAnomalies = aggregate.DefaultMaxAnomalies
	}
	var errs []error
	for _, a := range []struct{ name, addr string }{{"gRPC address", c.GRPCAddr}, {"HTTP address", c.HTTPAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %v; write host:port or :port", a.name, a.addr, err))
		}
	}
	if c.StorePath == "" {
		errs = append(errs, errors.New("no store: give the SQLite database file"))
	}
	if c.Retention < aggregate.BucketWidth {
		errs = append(errs, fmt.Errorf("retention %s is shorter than one bucket (%s)", c.Retention, aggregate.BucketWidth))
	}
	if c.MaxAnomalies < 1 {
		errs = append(errs, fmt.Errorf("max anomalies %d: want at least 1", c.MaxAnomalies))
	}
	if c.Grace < 0 || c.Tick < 0 || c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("grace, tick and shutdown timeout must not be negative"))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, fmt.Errorf("ingest TLS needs both a certificate file and a key file (certificate %q, key %q)", c.TLSCertFile, c.TLSKeyFile))
	}
	fc := flow.Config{IdleTimeout: c.IdleTimeout, Hold: c.Hold, PacketCap: c.PacketCap}
	if err := fc.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Service is a running classifier.
type Service struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Store
	geo     *geo.DB
	ing     *ingest.Server
	grpc    *grpc.Server
	http    *http.Server
	grpcLis net.Listener
	httpLis net.Listener
	ready   atomic.Bool
}

// Start opens the store, replays the journal and listens. Run serves.
func Start(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The certificate is read before anything is opened or created.
	var kp *keyPairFiles
	if cfg.TLSCertFile != "" {
		var err error
		if kp, err = loadKeyPairFiles(cfg.TLSCertFile, cfg.TLSKeyFile, log); err != nil {
			return nil, fmt.Errorf("ingest TLS: %w", err)
		}
	}
	s := &Service{cfg: cfg, log: log}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	var err error
	if s.st, err = store.Open(cfg.StorePath, store.Options{MaxAnomalies: cfg.MaxAnomalies}); err != nil {
		return nil, err
	}
	if s.geo, err = geo.Open(cfg.GeoIPDir); err != nil {
		return nil, err
	}
	if cfg.GeoIPDir != "" && (s.geo.CountryPath == "" || s.geo.ASNPath == "") {
		log.Warn("geoip database missing: its dimension is unknown", "dir", cfg.GeoIPDir, "country", s.geo.CountryPath, "asn", s.geo.ASNPath)
	}
	if cfg.Token == "" {
		log.Warn("ingest is not authenticated: any client that reaches the gRPC port may write; give a token file")
	}
	var metrics *api.Metrics
	s.ing, err = ingest.New(ctx, ingest.Config{
		Store: s.st, Geo: s.geo, Policy: cfg.Policy, Token: cfg.Token,
		Flow:  flow.Config{IdleTimeout: cfg.IdleTimeout, Hold: cfg.Hold, PacketCap: cfg.PacketCap},
		Grace: cfg.Grace, Tick: cfg.Tick, MaxAnomalies: cfg.MaxAnomalies,
		Observer: observer{&metrics}, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	metrics = api.NewMetrics(s.ing.Stats)
	opts := ingest.ServerOptions()
	if kp != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(kp.serverTLS())))
		log.Info("ingest serves TLS", "cert", cfg.TLSCertFile, "subject", kp.pair.Leaf.Subject.String(), "notAfter", kp.pair.Leaf.NotAfter)
	}
	s.grpc = grpc.NewServer(opts...)
	s.ing.Register(s.grpc)
	s.http = &http.Server{
		Handler: api.New(api.Config{
			Store: s.st, Registry: metrics.Registry, Dashboard: cfg.Dashboard, Logger: log,
			Ready: func() error {
				if !s.ready.Load() {
					return errors.New("starting")
				}
				return nil
			},
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("listen for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	if s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	ok = true
	return s, nil
}

// observer forwards to the metrics once they exist (they read the ingest
// server's stats, so they are made after it).
type observer struct{ m **api.Metrics }

func (o observer) Classified(node, policy string, r classify.Result) {
	if *o.m != nil {
		(*o.m).Classified(node, policy, r)
	}
}

// GRPCAddr and HTTPAddr are the addresses listened on.
func (s *Service) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the HTTP API's address.
func (s *Service) HTTPAddr() string { return s.httpLis.Addr().String() }

// Run serves until ctx ends, then shuts down in order.
func (s *Service) Run(ctx context.Context) error {
	defer s.close()
	errc := make(chan error, 2)
	go func() {
		if err := s.grpc.Serve(s.grpcLis); err != nil {
			errc <- fmt.Errorf("gRPC server: %w", err)
		}
	}()
	go func() {
		if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("HTTP server: %w", err)
		}
	}()
	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.ing.Run(runCtx) }()
	go func() { defer wg.Done(); s.retain(runCtx) }()
	s.ready.Store(true)
	s.log.Info("classifier serving", "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "store", s.cfg.StorePath, "policy", s.cfg.Policy)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.ready.Store(false)
	// Stop taking batches (one being accepted finishes first), then close
	// the agents' streams: they are long-lived, a graceful stop would wait
	// for them in vain. An accepted batch whose ack is lost is sent again
	// and acknowledged as a duplicate.
	s.ing.Drain()
	s.grpc.Stop()
	stopRun() // ingest.Run commits once more when it ends
	wg.Wait()
	shCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if herr := s.http.Shutdown(shCtx); herr != nil && err == nil {
		err = fmt.Errorf("HTTP shutdown: %w", herr)
	}
	s.log.Info("classifier stopped")
	return err
}

// retain deletes what is older than the retention, at start and hourly.
func (s *Service) retain(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := s.st.Retain(ctx, time.Now().Add(-s.cfg.Retention))
		if err != nil && ctx.Err() == nil {
			s.log.Error("retention", "err", err)
		} else if n > 0 {
			s.log.Info("retention deleted old rows", "rows", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Service) close() {
	if s.grpcLis != nil {
		s.grpcLis.Close()
	}
	if s.httpLis != nil {
		s.httpLis.Close()
	}
	if s.geo != nil {
		s.geo.Close()
	}
	if s.st != nil {
		s.st.Close()
	}
}

// ReadTokenFile reads a bearer token file: surrounding white space is
// trimmed; an empty token is an error.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("ingest token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("ingest token file %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("ingest token file %s holds more than one word: it must hold only the token", path)
	}
	return tok, nil
}
