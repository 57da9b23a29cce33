package ship

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

// fileSink writes a pcapng file: one interface of link type raw IP (101)
// with nanosecond timestamps per section, one Enhanced Packet Block per
// record holding the header-only packet capture.AppendPacket builds, its
// original length being the headers plus the record's payload length.
// Each Send ends with a flush, so what Send acknowledged is in the file
// (the operating system's page cache; there is no fsync), and a reader of
// the file sees whole batches.
//
// A file that exists is never truncated: when it is a pcapng file this
// sink wrote (it starts with the same section and interface header, and
// ends with a whole block), a new section (Section Header Block and
// Interface Description Block) is appended and the records follow it, so
// a restarted agent adds to the earlier capture; pcapng readers (ours,
// tshark) read the sections one after the other. Any other file is
// refused, unchanged.
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

// pcapngHeader is what NewPcapngWriter writes first: the section header
// and the interface description of a file sink.
var pcapngHeader = func() []byte {
	var b bytes.Buffer
	if _, err := capture.NewPcapngWriter(&b, capture.LinkTypeRaw, 0); err != nil {
		panic(err)
	}
	return b.Bytes()
}()

func openFile(path string) (*fileSink, error) {
	// 0640: the records name who talked to whom. O_APPEND: what is in the
	// file stays.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	if err := checkAppendable(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("file sink %s: %w; the file was left as it is: move it away or give another path", path, err)
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

// checkAppendable accepts an empty file, or a pcapng file that starts as
// a file sink's does and whose last block is whole (its trailing length
// points back at a block header of the same length), so that a section
// appended to it is read after the earlier ones.
func checkAppendable(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if size == 0 {
		return nil
	}
	notOurs := fmt.Errorf("it exists (%d bytes) and is not a pcapng capture written by a connscope file sink", size)
	if size < int64(len(pcapngHeader)) {
		return notOurs
	}
	head := make([]byte, len(pcapngHeader))
	if _, err := f.ReadAt(head, 0); err != nil {
		return err
	}
	if !bytes.Equal(head, pcapngHeader) {
		return notOurs
	}
	var tail [4]byte
	if _, err := f.ReadAt(tail[:], size-4); err != nil {
		return err
	}
	blen := int64(binary.LittleEndian.Uint32(tail[:]))
	var hdr [8]byte
	if blen >= 12 && blen%4 == 0 && blen <= size {
		if _, err := f.ReadAt(hdr[:], size-blen); err != nil {
			return err
		}
	}
	if blen < 12 || blen%4 != 0 || blen > size || int64(binary.LittleEndian.Uint32(hdr[4:8])) != blen {
		return fmt.Errorf("it is a connscope capture (%d bytes) whose last block is cut short (the disk filled, or the agent was killed while writing): connscope classify reads it up to there", size)
	}
	return nil
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
