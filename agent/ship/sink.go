package ship

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/connscope/connscope/packet"
)

// Sink is where records go: the classifier or a file.
//
// Send and Close are called by one goroutine at a time (a Queue's Run),
// except that Close may be called while a Send is blocked, to end it.
type Sink interface {
	// Send delivers batch and returns nil only when it is delivered: the
	// receiver acknowledged it, or the file holds it. On an error nothing
	// can be assumed (part or all of the batch may have arrived), and the
	// caller sends the same batch again before any other, which lets the
	// gRPC sink keep its sequence number so a receiver can drop the
	// duplicate. An error that wraps ErrRejected means sending it again
	// cannot succeed. Send does not keep batch after it returns.
	Send(ctx context.Context, batch []packet.Record) error
	// Close releases the sink. Sends after Close fail.
	Close() error
}

// ErrRejected is wrapped by Send errors after which sending the same batch
// again cannot succeed: the receiver refused its contents as invalid
// (gRPC INVALID_ARGUMENT), or the file format cannot hold a record. A
// Queue drops such a batch and counts it instead of retrying.
var ErrRejected = errors.New("batch rejected")

// DefaultAckTimeout is Options.AckTimeout when it is 0.
const DefaultAckTimeout = 10 * time.Second

// Options configure the sink Open returns. Fields that a kind of sink
// does not use are ignored (a file sink sends no token).
type Options struct {
	// Node and Policy are sent in every batch: the name of the node the
	// agent runs on and of the SamplingPolicy it samples for.
	Node, Policy string

	// Token is a bearer token sent as `authorization: Bearer <token>` when
	// a stream opens. At most one of Token and TokenFile may be set.
	Token string
	// TokenFile is a file holding the bearer token. It is read again each
	// time a stream opens, so a rotated token (a projected ServiceAccount
	// token) is picked up at the next reconnection; surrounding white space
	// is trimmed.
	TokenFile string

	// TLSConfig is the client TLS configuration of a grpcs:// or
	// clickhouses:// sink (a copy is used). Nil means the system's roots
	// and TLS 1.2 or later. It must be nil for grpc:// and clickhouse://
	// sinks, which are plaintext.
	TLSConfig *tls.Config
	// CAFile, for a grpcs:// or clickhouses:// sink, is a PEM file of the
	// CA certificates the sink's certificate must chain to, instead of the
	// system's roots. It is read at Open and again at each handshake after it
	// changed, so a CA replaced in a mounted Secret is trusted at the next
	// reconnection. At most one of TLSConfig and CAFile may be set.
	CAFile string

	// AckTimeout bounds one Send of a gRPC sink: opening a stream if
	// needed, sending the batch and receiving its ack. 0 means
	// DefaultAckTimeout.
	AckTimeout time.Duration

	// Logger receives what a sink has to say outside Send (a file sink
	// that cut the cut-short last block of an earlier capture). Nil:
	// slog.Default().
	Logger *slog.Logger

	// Counters, when set, is called for every batch to send the agent's
	// totals with it, so that the classifier can report loss before the
	// records reached it.
	Counters func() Counters
}

// Counters are an agent's totals since it started, sent with each batch
// (ingestpb.AgentCounters).
type Counters struct {
	// PacketsLogged counts packets read from the kernel.
	PacketsLogged uint64
	// PacketsLostKernel counts packets the kernel could not deliver
	// (NFLOG sequence gaps).
	PacketsLostKernel uint64
	// ReceiveOverflows counts ENOBUFS reports of the capture socket.
	ReceiveOverflows uint64
	// DroppedQueueFull counts records dropped because the Queue was full.
	DroppedQueueFull uint64
	// ReadErrors counts messages the capture could not read into records.
	ReadErrors uint64
}

// URLs the sinks accept, for error messages.
const urlForms = "grpc://host:port, grpcs://host:port, clickhouse://host:8123/database, clickhouses://host:8443/database or file:///absolute/path.pcapng"

// Open returns the sink rawURL names:
//
//	grpc://host:port          the Ingest service over plaintext gRPC
//	grpcs://host:port         the Ingest service over gRPC with TLS
//	file:///abs/path.pcapng   a pcapng file, created, or appended to with a
//	                          new section when a file sink wrote it
//	clickhouse://host:port/db the packets table of a ClickHouse database,
//	                          over its HTTP interface (port 8123 by default)
//	clickhouses://host:port/db the same over HTTPS (port 8443 by default)
//
// A gRPC sink connects lazily: Open does not fail when the receiver is
// down, the first Send does. A file sink creates its file at once.
func Open(rawURL string, o Options) (Sink, error) {
	if rawURL == "" {
		return nil, fmt.Errorf("no sink URL: give one of %s", urlForms)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("sink URL %q: %w; give one of %s", rawURL, err, urlForms)
	}
	if o.Token != "" && o.TokenFile != "" {
		return nil, errors.New("sink options: set a token or a token file, not both")
	}
	if o.TLSConfig != nil && o.CAFile != "" {
		return nil, errors.New("sink options: set a TLS configuration or a CA file, not both (the CA file's check replaces the configuration's own)")
	}
	if o.AckTimeout < 0 {
		return nil, fmt.Errorf("sink options: ack timeout %s is negative", o.AckTimeout)
	}
	switch u.Scheme {
	case "grpc", "grpcs":
		target, err := grpcTarget(rawURL, u)
		if err != nil {
			return nil, err
		}
		if u.Scheme == "grpc" && (o.TLSConfig != nil || o.CAFile != "") {
			return nil, fmt.Errorf("sink URL %q is plaintext gRPC but a TLS configuration was given: use grpcs://%s", rawURL, target)
		}
		return openGRPC(target, u.Scheme == "grpcs", o)
	case "clickhouse", "clickhouses":
		return openClickHouse(rawURL, o)
	case "file":
		path, err := filePath(rawURL, u)
		if err != nil {
			return nil, err
		}
		return openFile(path, o.logger())
	case "":
		return nil, fmt.Errorf("sink URL %q has no scheme: give one of %s", rawURL, urlForms)
	}
	return nil, fmt.Errorf("sink URL %q: scheme %q is not supported: give one of %s", rawURL, u.Scheme, urlForms)
}

// grpcTarget checks a grpc:// or grpcs:// URL and returns its host:port.
func grpcTarget(rawURL string, u *url.URL) (string, error) {
	if u.Opaque != "" {
		return "", fmt.Errorf("sink URL %q: write %s://host:port", rawURL, u.Scheme)
	}
	if u.User != nil {
		return "", fmt.Errorf("sink URL %q: no user or password in a sink URL; give a token with the token options", rawURL)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("sink URL %q: a gRPC sink URL is %s://host:port, without path, query or fragment", rawURL, u.Scheme)
	}
	if u.Host == "" {
		return "", fmt.Errorf("sink URL %q has no host: write %s://host:port", rawURL, u.Scheme)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return "", fmt.Errorf("sink URL %q needs a port: write %s://host:port (%v)", rawURL, u.Scheme, err)
	}
	if host == "" {
		return "", fmt.Errorf("sink URL %q has no host: write %s://host:port", rawURL, u.Scheme)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("sink URL %q: port %q is not a number from 1 to 65535", rawURL, port)
	}
	return u.Host, nil
}

// filePath checks a file:// URL and returns its absolute path.
func filePath(rawURL string, u *url.URL) (string, error) {
	if u.Opaque != "" || (u.Host != "" && u.Host != "localhost") {
		return "", fmt.Errorf("sink URL %q: the file path must be absolute: write file:///absolute/path.pcapng (three slashes)", rawURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("sink URL %q: a file sink URL has no query or fragment", rawURL)
	}
	p := u.Path
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("sink URL %q: the file path must be absolute: write file:///absolute/path.pcapng", rawURL)
	}
	if strings.HasSuffix(p, "/") {
		return "", fmt.Errorf("sink URL %q names a directory: give a file, e.g. file://%s", rawURL, filepath.Join(p, "connscope.pcapng"))
	}
	return filepath.Clean(p), nil
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}
