// Package chclient is a small client of ClickHouse's HTTP interface, and
// the row format of connscope's packets table, shared by the agent's
// clickhouse sink (agent/ship) and the ClickHouse store of the classifier
// (classifier/chstore).
//
// HTTP is used rather than the native protocol because it is the interface
// that stays the same across ClickHouse releases: a statement is the body
// (or the query parameter) of a POST, data goes in and out in a named
// format (RowBinary here), and an error is a non-200 status with the
// server's message as the body. It works against Debian's 18.16 and
// against current releases; the native Go clients do not cover both (see
// the README's ClickHouse section).
//
// clickhouses:// URLs speak HTTPS to ClickHouse's https_port, checking its
// certificate (Config.Secure, Config.TLS).
//
// What it does not do: pool sessions, retry (callers decide), compress, or
// know connscope's schema beyond the packets row (classifier/chstore owns
// the schema and its migrations).
package chclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultPort is ClickHouse's HTTP port, DefaultTLSPort its HTTPS port
// (https_port in its configuration).
const (
	DefaultPort    = "8123"
	DefaultTLSPort = "8443"
)

// Config says how to reach a database.
type Config struct {
	// Addr is the HTTP interface's host:port.
	Addr string
	// Database is the database statements run in.
	Database string
	// User and Password authenticate (HTTP basic authentication); an
	// empty User is ClickHouse's "default" user.
	User, Password string
	// Timeout bounds one request, connection included; 0 means none
	// (the caller's context still applies).
	Timeout time.Duration
	// Secure speaks HTTPS (clickhouses://): the statements, the rows and
	// the credentials then cross the network encrypted, and the server's
	// certificate is checked.
	Secure bool
	// TLS is the TLS configuration of a Secure client (which CAs to trust,
	// usually); nil means TLS 1.2 or later with the system's roots. Set
	// only with Secure.
	TLS *tls.Config
}

// ParseURL reads clickhouse://host[:port]/database, the HTTP interface
// (default port 8123), or clickhouses://host[:port]/database, HTTPS
// (default port 8443; Config.Secure). A user or password in the URL is
// refused: credentials come from elsewhere (environment, files), not from
// flags that show in process listings.
func ParseURL(raw string) (Config, error) {
	form := "clickhouse://host:8123/database or clickhouses://host:8443/database"
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("ClickHouse URL %q: %v; write %s", raw, err, form)
	}
	secure := u.Scheme == "clickhouses"
	switch {
	case u.Scheme == "clickhouse":
		form = "clickhouse://host:8123/database"
	case secure:
		form = "clickhouses://host:8443/database"
	default:
		return Config{}, fmt.Errorf("ClickHouse URL %q: scheme %q; write %s", raw, u.Scheme, form)
	}
	if u.User != nil {
		return Config{}, fmt.Errorf("ClickHouse URL %q: no user or password in the URL; give them in CONNSCOPE_CLICKHOUSE_USERNAME and CONNSCOPE_CLICKHOUSE_PASSWORD", raw)
	}
	if u.Opaque != "" || u.Host == "" {
		return Config{}, fmt.Errorf("ClickHouse URL %q has no host; write %s", raw, form)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return Config{}, fmt.Errorf("ClickHouse URL %q: no query or fragment; write %s", raw, form)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return Config{}, fmt.Errorf("ClickHouse URL %q has no host; write %s", raw, form)
	}
	if port == "" {
		port = DefaultPort
		if secure {
			port = DefaultTLSPort
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return Config{}, fmt.Errorf("ClickHouse URL %q: port %q is not a number from 1 to 65535", raw, port)
	}
	db := strings.Trim(u.Path, "/")
	if db == "" {
		return Config{}, fmt.Errorf("ClickHouse URL %q names no database; write %s", raw, form)
	}
	if !IsIdentifier(db) {
		return Config{}, fmt.Errorf("ClickHouse URL %q: database %q must be a plain identifier (letters, digits, '_', not starting with a digit)", raw, db)
	}
	return Config{Addr: net.JoinHostPort(host, port), Database: db, Secure: secure}, nil
}

// IsIdentifier reports whether s is a plain SQL identifier.
func IsIdentifier(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Client sends statements to one database. It is safe for concurrent use.
type Client struct {
	cfg  Config
	base string
	hc   *http.Client
}

// New returns a client; it does not connect.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("ClickHouse: no address")
	}
	if cfg.Database != "" && !IsIdentifier(cfg.Database) {
		return nil, fmt.Errorf("ClickHouse: database %q must be a plain identifier", cfg.Database)
	}
	if cfg.TLS != nil && !cfg.Secure {
		return nil, fmt.Errorf("ClickHouse at %s: a TLS configuration for plain HTTP: use clickhouses://", cfg.Addr)
	}
	tr := &http.Transport{
		Proxy:               nil, // loopback and in-cluster: never a proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     60 * time.Second,
	}
	scheme := "http://"
	if cfg.Secure {
		scheme = "https://"
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLS != nil {
			tr.TLSClientConfig = cfg.TLS.Clone()
		}
		tr.TLSHandshakeTimeout = 10 * time.Second
	}
	return &Client{cfg: cfg, base: scheme + cfg.Addr + "/", hc: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Config returns the client's configuration.
func (c *Client) Config() Config { return c.cfg }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Error is an error the server answered with.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("ClickHouse answered %d: %s", e.Status, e.Message)
}

// do posts body with query as the statement (in the URL when body holds
// data) and returns the response for a 200, an *Error otherwise.
func (c *Client) do(ctx context.Context, query string, body io.Reader, inURL bool, db bool) (*http.Response, error) {
	v := url.Values{}
	if db && c.cfg.Database != "" {
		v.Set("database", c.cfg.Database)
	}
	if inURL {
		v.Set("query", query)
	} else {
		body = strings.NewReader(query)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"?"+v.Encode(), body)
	if err != nil {
		return nil, err
	}
	if c.cfg.User != "" || c.cfg.Password != "" {
		user := c.cfg.User
		if user == "" {
			user = "default"
		}
		req.SetBasicAuth(user, c.cfg.Password)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ClickHouse at %s: %w", c.cfg.Addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, &Error{Status: resp.StatusCode, Message: strings.TrimSpace(string(msg))}
	}
	return resp, nil
}

// Exec runs a statement that returns nothing of interest.
func (c *Client) Exec(ctx context.Context, query string) error {
	resp, err := c.do(ctx, query, nil, false, true)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

// ExecNoDB runs a statement outside the database (CREATE DATABASE).
func (c *Client) ExecNoDB(ctx context.Context, query string) error {
	resp, err := c.do(ctx, query, nil, false, false)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

// Insert runs query (an INSERT ... FORMAT F) with data as its rows. It
// returns nil only when the server answered 200: the rows are written.
func (c *Client) Insert(ctx context.Context, query string, data []byte) error {
	resp, err := c.do(ctx, query, bytes.NewReader(data), true, true)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

// Query runs a SELECT and returns its output; the caller closes it. Use a
// FORMAT clause (RowBinary, TabSeparated) to say what comes back.
func (c *Client) Query(ctx context.Context, query string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, query, nil, false, true)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// QueryTSV runs a SELECT ... FORMAT TabSeparated and returns its rows
// split into fields (values with tabs, newlines or backslashes come back
// escaped: use it for numbers and plain names).
func (c *Client) QueryTSV(ctx context.Context, query string) ([][]string, error) {
	body, err := c.Query(ctx, query+" FORMAT TabSeparated")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("ClickHouse at %s: %w", c.cfg.Addr, err)
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line == "" {
			continue
		}
		rows = append(rows, strings.Split(line, "\t"))
	}
	return rows, nil
}

// Ping checks that the server answers.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.QueryTSV(ctx, "SELECT 1")
	return err
}

// Version returns the server's version string.
func (c *Client) Version(ctx context.Context) (string, error) {
	rows, err := c.QueryTSV(ctx, "SELECT version()")
	if err != nil {
		return "", err
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return "", errors.New("ClickHouse: unexpected answer to SELECT version()")
	}
	return rows[0][0], nil
}

// Quote returns s as an SQL string literal.
func Quote(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for _, c := range []byte(s) {
		switch c {
		case '\'', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString(`\n`)
		case 0:
			b.WriteString(`\0`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}
