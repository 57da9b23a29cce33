package ship

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/connscope/connscope/internal/chclient"
	"github.com/connscope/connscope/packet"
)

// Environment variables the clickhouse sink reads its credentials from
// (the operator sets them from the policy's credentials Secret). Unset,
// ClickHouse's default user without a password is used.
const (
	EnvClickHouseUser     = "CONNSCOPE_CLICKHOUSE_USERNAME"
	EnvClickHousePassword = "CONNSCOPE_CLICKHOUSE_PASSWORD"
)

// insertPackets is the statement of every batch.
const insertPackets = "INSERT INTO packets (" + chclient.PacketColumns + ") FORMAT RowBinary"

// clickhouseSink inserts each batch into the packets table of a ClickHouse
// database (classifier/chstore's schema, created by the classifier) with
// one HTTP request: INSERT ... FORMAT RowBinary. Send returns nil only when
// ClickHouse answered 200, i.e. the rows are written.
//
// Every row carries the agent's instance number (random, drawn at Open),
// the batch's sequence number and its index in the batch. A batch sent
// again after a failure keeps its sequence number, so when the first
// insert did succeed (only its answer was lost), the classifier reads the
// twice-inserted rows once.
type clickhouseSink struct {
	c       *chclient.Client
	opts    Options
	timeout time.Duration
	agent   uint64

	mu     sync.Mutex
	closed bool
	acked  uint64 // the last batch inserted; the next is acked+1
	buf    []byte
	row    chclient.Row
}

func openClickHouse(rawURL string, o Options) (*clickhouseSink, error) {
	cfg, err := chclient.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("sink URL: %w", err)
	}
	if o.Token != "" || o.TokenFile != "" {
		return nil, fmt.Errorf("sink URL %q: a ClickHouse sink takes no token; give credentials in %s and %s", rawURL, EnvClickHouseUser, EnvClickHousePassword)
	}
	if !cfg.Secure && (o.TLSConfig != nil || o.CAFile != "") {
		return nil, fmt.Errorf("sink URL %q is plain HTTP but a TLS configuration or CA file was given: use clickhouses://%s/%s (ClickHouse's https_port)", rawURL, cfg.Addr, cfg.Database)
	}
	switch {
	case o.CAFile != "":
		if cfg.TLS, err = CAFileTLS(o.CAFile, cfg.Addr); err != nil {
			return nil, fmt.Errorf("ClickHouse sink: %w", err)
		}
	case o.TLSConfig != nil:
		cfg.TLS = o.TLSConfig
	}
	cfg.User, cfg.Password = os.Getenv(EnvClickHouseUser), os.Getenv(EnvClickHousePassword)
	c, err := chclient.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("ClickHouse sink: %w", err)
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("ClickHouse sink: draw an agent instance number: %w", err)
	}
	s := &clickhouseSink{c: c, opts: o, timeout: o.AckTimeout, agent: binary.LittleEndian.Uint64(id[:])}
	if s.timeout == 0 {
		s.timeout = DefaultAckTimeout
	}
	s.row.Node, s.row.Policy, s.row.Agent = o.Node, o.Policy, s.agent
	return s, nil
}

// Send inserts batch, within the ack timeout.
func (s *clickhouseSink) Send(ctx context.Context, batch []packet.Record) error {
	if len(batch) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	addr := s.c.Config().Addr
	if s.closed {
		return fmt.Errorf("ClickHouse sink %s: %w", addr, errSinkClosed)
	}
	seq := s.acked + 1
	s.row.Batch = seq
	s.buf = s.buf[:0]
	for i := range batch {
		s.row.Rec = batch[i]
		s.row.Idx = uint32(i)
		s.buf = chclient.AppendRow(s.buf, &s.row)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.c.Insert(ctx, insertPackets, s.buf); err != nil {
		return fmt.Errorf("ClickHouse sink %s: batch %d: %w", addr, seq, err)
	}
	s.acked = seq
	return nil
}

// Close releases the client's connections; Sends after it fail.
func (s *clickhouseSink) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.c.Close()
	return nil
}
