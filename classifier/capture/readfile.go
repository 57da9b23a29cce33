package capture

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/connscope/connscope/packet"
)

// Stdin is the path that Open reads as standard input.
const Stdin = "-"

// Open returns a Reader of the capture file at path, and the Closer to
// call when done with it. The path "-" (Stdin) reads standard input, so
// that a capture can be piped in (tcpdump -w -, zcat, zstd -dc). A file
// compressed with gzip (the first two bytes 1f 8b, whatever its name:
// archives such as MAWI's and CAIDA's keep .pcap.gz files) is decompressed
// as it is read, concatenated gzip members as one stream. The byte offsets
// in a compressed file's errors count decompressed bytes, and the file's
// name in them says so; an error of the compressed data itself (a bad
// checksum, a truncated stream) is named as such.
func Open(path string) (*Reader, io.Closer, error) {
	var f *os.File
	name := path
	if path == Stdin {
		f, name = os.Stdin, "standard input"
	} else {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil, nil, err
		}
	}
	// Look at the first two bytes without consuming them. The bufio.Reader
	// costs nothing on the way: once its first bytes are handed out, the
	// Reader's reads, larger than its buffer, pass straight through it
	// (and gzip reads from it a byte at a time, which needs the buffer).
	br := bufio.NewReaderSize(f, 64<<10)
	var src io.Reader = br
	if head, _ := br.Peek(2); len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: gzip header: %w", name, err)
		}
		src = gzipErrors{zr}
		name += " (gzip, decompressed)"
	}
	r, err := NewReader(src, name)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return r, f, nil
}

// gzipErrors names the errors of the compressed data: a gzip stream that
// ends early says "unexpected EOF" only, which would read as the capture
// inside it being truncated.
type gzipErrors struct{ r *gzip.Reader }

func (g gzipErrors) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("the gzip data ends early (the compressed file is truncated): %w", err)
	default:
		err = fmt.Errorf("the gzip data is corrupt: %w", err)
	}
	return n, err
}

// ReadFile returns every TCP packet record of the capture file at path
// (opened as Open does), in file order. It holds them all in memory: for
// tests and small files; a Reader streams.
func ReadFile(path string) ([]packet.Record, error) {
	r, c, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var recs []packet.Record
	for {
		var rec packet.Record
		err := r.Next(&rec)
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, rec)
	}
}
