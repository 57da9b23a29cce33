package capture

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/connscope/connscope/packet"
)

// Stdin is the path that Open reads as standard input.
const Stdin = "-"

// Open returns a Reader of the capture file at path, and the Closer to
// call when done with it. The path "-" (Stdin) reads standard input, so
// that a capture can be piped in (tcpdump -w -, xzcat). A file compressed
// with gzip or zstd (recognised by its first bytes, whatever its name:
// archives such as MAWI's and CAIDA's keep .pcap.gz files, and Wireshark
// reads both) is decompressed as it is read, concatenated
// members or frames as one stream. The byte offsets in a compressed
// file's errors count decompressed bytes, and the file's name in them says
// so; an error of the compressed data itself (a bad checksum, a truncated
// stream) is named as such.
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
	// Look at the first bytes without consuming them. The bufio.Reader
	// costs nothing on the way: once its first bytes are handed out, the
	// Reader's reads, larger than its buffer, pass straight through it
	// (and the decompressors read from it in small pieces, which needs the
	// buffer).
	br := bufio.NewReaderSize(f, 64<<10)
	var src io.Reader = br
	var closer io.Closer = f
	head, _ := br.Peek(4)
	switch {
	case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: gzip header: %w", name, err)
		}
		src = compressedErrors{zr, "gzip"}
		name += " (gzip, decompressed)"
	case len(head) == 4 && binary.LittleEndian.Uint32(head) == zstdMagic:
		// One goroutine (the caller's), and a window of at most 128 MiB
		// (zstd --long's default; ordinary levels use 8 MiB or less), so
		// that a file cannot make the reader take more memory than that.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: zstd: %w", name, err)
		}
		src = compressedErrors{zr, "zstd"}
		closer = closeFunc(func() error { zr.Close(); return f.Close() })
		name += " (zstd, decompressed)"
	}
	r, err := NewReader(src, name)
	if err != nil {
		closer.Close()
		return nil, nil, err
	}
	return r, closer, nil
}

const (
	zstdMagic     = 0xfd2fb528
	zstdMaxWindow = 128 << 20
)

// compressedErrors names the errors of the compressed data: a stream that
// ends early says "unexpected EOF" only, which would read as the capture
// inside it being truncated.
type compressedErrors struct {
	r      io.Reader
	format string
}

func (c compressedErrors) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("the %s data ends early (the compressed file is truncated): %w", c.format, err)
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		err = fmt.Errorf("the zstd data asks for a window larger than the %d MiB allowed here (compressed with --long above 27?); decompress it with zstd -dc --long=31 FILE | connscope classify -: %w", zstdMaxWindow>>20, err)
	default:
		err = fmt.Errorf("the %s data is corrupt: %w", c.format, err)
	}
	return n, err
}

// closeFunc is a Close method made of a function.
type closeFunc func() error

func (f closeFunc) Close() error { return f() }

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
