package ship

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/offline"
	"github.com/connscope/connscope/classifier/report"
	"github.com/connscope/connscope/packet"
)

func fileURL(path string) string { return "file://" + path }

func TestFileSinkWritesHeaderOnlyRawIPPacketsThatReadBackAsTheRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	s := openSink(t, fileURL(path), Options{})
	recs := records(3000, 0, 1)
	for _, b := range [][]packet.Record{recs[:1000], recs[1000:1001], recs[1001:]} {
		if err := s.Send(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	// Read while the sink is still open: what Send acknowledged is in
	// the file.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := capture.NewReader(f, path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		ts, link, data, err := r.NextFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		want := capture.AppendPacket(nil, &recs[i])
		if link != capture.LinkTypeRaw || ts != recs[i].Timestamp || !bytes.Equal(data, want) {
			t.Fatalf("frame %d: link type %d, ts %d, % x\nwant link type 101, ts %d, % x", i, link, ts, data, recs[i].Timestamp, want)
		}
	}
	if _, _, _, err := r.NextFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, readRecords(t, path), recs)
}

func readRecords(tb testing.TB, path string) []packet.Record {
	tb.Helper()
	recs, err := capture.ReadFile(path)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	return recs
}

// classifyFile returns what `connscope classify --format json` says of
// each connection in path, sorted.
func classifyFile(tb testing.TB, path string) []string {
	tb.Helper()
	var lines []string
	_, err := offline.Run([]string{path}, flow.Config{}, func(c *flow.Conn, r classify.Result) {
		rc := report.FromConn(c, r)
		lines = append(lines, string(report.AppendJSON(nil, &rc)))
	})
	if err != nil {
		tb.Fatalf("classify %s: %v", path, err)
	}
	slices.Sort(lines)
	return lines
}

func TestTheFileSinkCopyOfARealCaptureClassifiesLikeTheCapture(t *testing.T) {
	files, err := filepath.Glob("../../classifier/capture/testdata/real/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no real captures: %v", err)
	}
	for _, orig := range files {
		t.Run(filepath.Base(orig), func(t *testing.T) {
			recs := readRecords(t, orig)
			copyPath := filepath.Join(t.TempDir(), "copy.pcapng")
			s := openSink(t, fileURL(copyPath), Options{})
			q := NewQueue(s, QueueConfig{Capacity: 64, BatchSize: 16, FlushInterval: time.Millisecond})
			stop := runQueue(t, q)
			for i := range recs {
				for !q.Offer(&recs[i]) {
					time.Sleep(time.Millisecond)
				}
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			sameRecords(t, readRecords(t, copyPath), recs)
			want, got := classifyFile(t, orig), classifyFile(t, copyPath)
			if len(want) == 0 {
				t.Fatal("the capture has no connection")
			}
			if !slices.Equal(got, want) {
				t.Fatalf("classification of the copy:\n%s\nof the capture:\n%s", got, want)
			}
		})
	}
}

func TestFileSinkRejectsABatchWithARecordBefore1970AndWritesNoneOfIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	s := openSink(t, fileURL(path), Options{})
	batch := records(3, 0, 1)
	batch[2].Timestamp = -1
	err := s.Send(context.Background(), batch)
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("Send: %v, want ErrRejected", err)
	}
	if msg := contains(err, "record 2", "before 1970"); msg != "" {
		t.Fatal(msg)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readRecords(t, path); len(got) != 0 {
		t.Fatalf("%d records written, want none", len(got))
	}
}

func TestFileSinkTruncatesAnOldFileAndRefusesSendsAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	if err := os.WriteFile(path, bytes.Repeat([]byte("old"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	s := openSink(t, fileURL(path), Options{})
	recs := records(2, 0, 1)
	if err := s.Send(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), recs); !errors.Is(err, errSinkClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	sameRecords(t, readRecords(t, path), recs)
}

func TestFileSinkInAMissingDirectorySaysSo(t *testing.T) {
	_, err := Open("file:///nonexistent-dir-of-connscope/agent.pcapng", Options{})
	if msg := contains(err, "file sink", "/nonexistent-dir-of-connscope/agent.pcapng", "no such file or directory"); msg != "" {
		t.Fatal(msg)
	}
}
