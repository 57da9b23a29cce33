package ship

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

// fileSink writes a pcapng file: one section, one interface of link type
// raw IP (101) with nanosecond timestamps, one Enhanced Packet Block per
// record holding the header-only packet capture.AppendPacket builds, its
// original length being the headers plus the record's payload length.
// Each Send ends with a flush, so what Send acknowledged is in the file
// (the operating system's page cache; there is no fsync), and a reader of
// the file sees whole batches.
//
// A write error (disk full) is final: the buffered writer keeps it, and
// every later Send returns it.
type fileSink struct {
	path string

	mu  sync.Mutex
	f   *os.File
	bw  *bufio.Writer
	w   *capture.PcapngWriter
	buf []byte
}

func openFile(path string) (*fileSink, error) {
	// 0640: the records name who talked to whom.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	w, err := capture.NewPcapngWriter(bw, capture.LinkTypeRaw, 0)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("file sink %s: %w", path, err)
	}
	return &fileSink{path: path, f: f, bw: bw, w: w}, nil
}

// Send appends the batch to the file and flushes it. A record the format
// cannot hold (a timestamp before 1970) rejects the whole batch before
// anything is written.
func (s *fileSink) Send(_ context.Context, batch []packet.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return fmt.Errorf("file sink %s: %w", s.path, errSinkClosed)
	}
	for i := range batch {
		if batch[i].Timestamp < 0 {
			return fmt.Errorf("file sink %s: %w: record %d has timestamp %d, before 1970", s.path, ErrRejected, i, batch[i].Timestamp)
		}
	}
	for i := range batch {
		r := &batch[i]
		s.buf = capture.AppendPacket(s.buf[:0], r)
		if err := s.w.WritePacket(r.Timestamp, s.buf, len(s.buf)+int(r.PayloadLen)); err != nil {
			return fmt.Errorf("file sink %s: %w", s.path, err)
		}
	}
	if err := s.bw.Flush(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.path, err)
	}
	return nil
}

// Close flushes and closes the file.
func (s *fileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.bw.Flush()
	err = errors.Join(err, s.f.Close())
	s.f = nil
	if err != nil {
		return fmt.Errorf("file sink %s: %w", s.path, err)
	}
	return nil
}
