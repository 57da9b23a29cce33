package capture

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/connscope/connscope/internal/clitest"
	"github.com/connscope/connscope/packet"
)

// openTestFile is a pcap file of many frames (so that its gzip form spans
// more than one of the Reader's buffers of compressed input), and the
// records it holds.
func openTestFile(t *testing.T) ([]byte, []packet.Record) {
	t.Helper()
	var frames []frame
	var want []packet.Record
	for i := range 20000 {
		r := rec4(packet.ACK, uint16(i%1400))
		r.Seq = uint32(i * 7919)
		r.Timestamp = 1_700_000_000_000_000_000 + int64(i)*1000
		frames = append(frames, frame{ts: r.Timestamp, data: ip(r)})
		want = append(want, r)
	}
	return pcapFile(binary.LittleEndian, true, 101, frames...), want
}

func gzipped(t *testing.T, members ...[]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, m := range members {
		w := gzip.NewWriter(&b)
		if _, err := w.Write(m); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// zstded compresses each member as a zstd frame (streamed, so that the
// frame header states the window, not the content size), frames
// concatenated.
func zstded(t *testing.T, window int, members ...[]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, m := range members {
		w, err := zstd.NewWriter(&b, zstd.WithWindowSize(window), zstd.WithEncoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, bytes.NewReader(m)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpenReadsGzipWhateverTheName(t *testing.T) {
	file, want := openTestFile(t)
	half := len(file) / 2
	tests := []struct {
		name string
		data []byte
	}{
		{"plain.pcap", file},
		{"capture.pcap.gz", gzipped(t, file)},
		// gzip by its magic bytes, not its name
		{"capture.pcap", gzipped(t, file)},
		// concatenated members (cat a.gz b.gz) are one stream
		{"members.gz", gzipped(t, file[:half], file[half:])},
		{"capture.pcap.zst", zstded(t, 1<<20, file)},
		{"frames.zst", zstded(t, 1<<20, file[:half], file[half:])},
		// zstd --long's default window is accepted
		{"long.zst", zstded(t, 128<<20, file)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadFile(writeTemp(t, tc.name, tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("read %d records, not the %d written (or they differ)", len(got), len(want))
			}
		})
	}
}

func TestOpenNamesCompressionErrors(t *testing.T) {
	file, _ := openTestFile(t)
	gz := gzipped(t, file)
	corrupt := bytes.Clone(gz)
	copy(corrupt[len(corrupt)-8:], "XXXX") // the CRC-32 of the member
	zst := zstded(t, 1<<20, file)
	corruptZst := bytes.Clone(zst)
	copy(corruptZst[len(corruptZst)-4:], "XXXX") // the frame's checksum
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"truncated.gz", gz[:len(gz)/2], []string{"truncated.gz (gzip, decompressed): read at byte ", "the gzip data ends early (the compressed file is truncated)"}},
		{"corrupt.gz", corrupt, []string{"corrupt.gz (gzip, decompressed): read at byte ", "the gzip data is corrupt", "checksum"}},
		// a pcap cut short inside a whole gzip stream is the capture's fault,
		// at an offset of the decompressed data
		{"cut.pcap.gz", gzipped(t, file[:len(file)-10]), []string{"cut.pcap.gz (gzip, decompressed): byte ", "file ends inside a record", "the file is corrupt or truncated"}},
		{"header.gz", []byte{0x1f, 0x8b, 0, 0}, []string{"header.gz: gzip header: "}},
		{"truncated.zst", zst[:len(zst)/2], []string{"truncated.zst (zstd, decompressed): read at byte ", "the zstd data ends early (the compressed file is truncated)"}},
		{"corrupt.zst", corruptZst, []string{"corrupt.zst (zstd, decompressed): read at byte ", "the zstd data is corrupt"}},
		// a frame that asks for more memory than the reader grants
		{"window.zst", zstded(t, 256<<20, file), []string{"window.zst (zstd, decompressed): ", "asks for a window larger than the 128 MiB allowed here", "zstd -dc --long=31"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadFile(writeTemp(t, tc.name, tc.data))
			if err == nil {
				t.Fatalf("read %d records and no error", len(got))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if tc.name != "header.gz" && tc.name != "window.zst" && len(got) == 0 {
				t.Errorf("no records before the error: the readable part was lost")
			}
		})
	}
}

func TestOpenStdin(t *testing.T) {
	file, want := openTestFile(t)
	for _, tc := range []struct {
		name string
		data []byte
	}{{"plain", file}, {"gzip", gzipped(t, file)}, {"zstd", zstded(t, 1<<20, file)}} {
		t.Run(tc.name, func(t *testing.T) {
			clitest.StdinFrom(t, tc.data)
			got, err := ReadFile(Stdin)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("read %d records from standard input, not the %d written (or they differ)", len(got), len(want))
			}
		})
	}
}

func TestOpenStdinNamedInErrors(t *testing.T) {
	clitest.StdinFrom(t, []byte("not a capture"))
	_, err := ReadFile(Stdin)
	if err == nil || !strings.HasPrefix(err.Error(), "standard input: byte 0: magic number") {
		t.Fatalf("error %v, want one naming standard input and the bad magic number", err)
	}
}
