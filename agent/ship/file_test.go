package ship

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/offline"
	"github.com/connscope/connscope/classifier/report"
	"github.com/connscope/connscope/packet"
	"golang.org/x/sys/unix"
)

func fileURL(path string) string { return "file://" + path }

// writeRun is one run of an agent's file sink on path: open, send recs
// (if any), close. It returns the file's contents after.
func writeRun(t *testing.T, path string, recs []packet.Record) []byte {
	t.Helper()
	s := openSink(t, fileURL(path), Options{})
	if len(recs) > 0 {
		if err := s.Send(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

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

func TestFileSinkRefusesSendsAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
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

// TestFileSinkAppendsASectionToItsOwnFile: opening the file sink again on
// a file it wrote (an agent restarted with the same --sink) keeps every
// byte already written and appends a new section; our reader, classify
// and tshark read the records of both runs.
func TestFileSinkAppendsASectionToItsOwnFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	runs := [][]packet.Record{records(1500, 0, 1), records(700, 0, 2), records(0, 0, 3), records(5, 0, 4)}
	var all []packet.Record
	var before []byte
	for i, recs := range runs {
		after := writeRun(t, path, recs)
		if !bytes.HasPrefix(after, before) {
			t.Fatalf("run %d changed what the earlier runs wrote", i)
		}
		before = after
		all = append(all, recs...)
		sameRecords(t, readRecords(t, path), all)
	}
	if len(classifyFile(t, path)) == 0 {
		t.Error("classify finds no connection in the file")
	}
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("tshark not installed (hack/setup-scenarios.sh installs it)")
	}
	cmd := exec.Command("tshark", "-n", "-r", path, "-T", "fields", "-e", "frame.time_epoch")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark -r: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(all) {
		t.Fatalf("tshark reads %d frames, want %d:\n%s", len(lines), len(all), out)
	}
	last := all[len(all)-1].Timestamp
	if want := fmt.Sprintf("%d.%09d", last/1e9, last%1e9); lines[len(lines)-1] != want {
		t.Errorf("tshark's last frame at %s, want %s", lines[len(lines)-1], want)
	}
}

// TestFileSinkRefusesAFileItDidNotWrite: an existing file that is not a
// file sink's pcapng (text, a pcap file, a pcapng of another writer) is
// refused with a clear error and left byte for byte as it was.
func TestFileSinkRefusesAFileItDidNotWrite(t *testing.T) {
	var pcap bytes.Buffer
	if _, err := capture.NewPcapWriter(&pcap, capture.LinkTypeRaw, 0, true); err != nil {
		t.Fatal(err)
	}
	var other bytes.Buffer
	if _, err := capture.NewPcapngWriter(&other, capture.LinkTypeEthernet, 0); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"text", bytes.Repeat([]byte("old"), 1000), "is not a pcapng capture written by a connscope file sink"},
		{"short text", []byte("old\n"), "is not a pcapng capture written by a connscope file sink"},
		{"pcap", pcap.Bytes(), "is not a pcapng capture written by a connscope file sink"},
		{"pcapng of Ethernet", other.Bytes(), "is not a pcapng capture written by a connscope file sink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Open(fileURL(path), Options{})
			if msg := contains(err, "file sink "+path, tc.want, "left as it is"); msg != "" {
				t.Fatal(msg)
			}
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, tc.data) {
				t.Fatalf("the file changed (%v)", err)
			}
		})
	}
}

func TestFileSinkInAMissingDirectorySaysSo(t *testing.T) {
	_, err := Open("file:///nonexistent-dir-of-connscope/agent.pcapng", Options{})
	if msg := contains(err, "file sink", "/nonexistent-dir-of-connscope/agent.pcapng", "no such file or directory"); msg != "" {
		t.Fatal(msg)
	}
}

// A capture whose last block was cut short (the agent was killed, or the
// disk filled, in the middle of a write) is cut after its last whole block
// and appended to, with a warning: refusing it would keep a restarted
// agent from starting at all. The cut block was never acknowledged.
func TestFileSinkCutsACutShortLastBlockAndAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	first := records(3, 0, 1)
	whole := writeRun(t, path, first)
	last := int(binary.LittleEndian.Uint32(whole[len(whole)-4:])) // the third record's block
	if err := os.WriteFile(path, whole[:len(whole)-6], 0o640); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s2, err := Open(fileURL(path), Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("a capture cut short was refused: %v", err)
	}
	second := records(2, 100, 2)
	if err := s2.Send(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("bytesRemoved=%d", last-6); !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), "cut short") {
		t.Errorf("log %q lacks a warning with %s", logs.String(), want)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, whole[:len(whole)-last]) {
		t.Error("the whole blocks before the cut one changed")
	}
	recs := readRecords(t, path)
	if len(recs) != 4 || recs[0].Seq != first[0].Seq || recs[1].Seq != first[1].Seq || recs[2].Seq != second[0].Seq || recs[3].Seq != second[1].Seq {
		t.Fatalf("read %d records, want the first two and the two sent after the restart", len(recs))
	}
}

// TestFileSinkWritesABatchLargerThanOneWrite: a batch of more than
// writeChunk bytes of blocks goes out in several writes, whole and in
// order.
func TestFileSinkWritesABatchLargerThanOneWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	s := openSink(t, fileURL(path), Options{})
	recs := records(MaxBatchSize, 0, 1) // about 1.3 MiB of blocks
	if err := s.Send(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() < 4*writeChunk {
		t.Fatalf("file %v, %v: want more than %d bytes, so that the batch took several writes", st, err, 4*writeChunk)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, readRecords(t, path), recs)
}

// TestFileSinkWriteErrorsAreFinal: once a write failed (a disk full), the
// file may end in part of a block, so the sink refuses every later batch
// with that error instead of writing after it. The failure is made real
// by swapping the sink's descriptor for a read-only one of the same file.
func TestFileSinkWriteErrorsAreFinal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	s := openSink(t, fileURL(path), Options{})
	fs := s.(*fileSink)
	first := records(10, 0, 1)
	if err := s.Send(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rw := fs.f
	fs.f = ro
	err = s.Send(context.Background(), records(10, 10, 2))
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Send on a descriptor that cannot write: %v, want an error naming %s", err, path)
	}
	fs.f = rw
	ro.Close()
	if err2 := s.Send(context.Background(), records(10, 20, 3)); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("Send after the failure: %v, want the first error again: %v", err2, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, readRecords(t, path), first)
}

// TestFileSinkWritesEitherWay: batches written with raw write(2) calls and
// batches written through the Go scheduler (after a raw write slept) make
// one file that holds every record in order.
func TestFileSinkWritesEitherWay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	s := openSink(t, fileURL(path), Options{})
	fs := s.(*fileSink)
	var all []packet.Record
	for i := range 6 {
		if i%2 == 1 {
			fs.slowUntil = time.Now().Add(time.Hour) // through the scheduler
		} else {
			fs.slowUntil = time.Time{} // raw
		}
		batch := records(500, uint32(i*500), uint64(i+1))
		if err := s.Send(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		all = append(all, batch...)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	sameRecords(t, readRecords(t, path), all)
}

// TestFileSinkStopsRawWritesAfterOneSlept: a raw write that sleeps holds
// the goroutine's P, so after one the sink writes through the scheduler for
// slowPeriod. The write is made to sleep for real: the sink's descriptor is
// swapped for a blocking pipe that another process starts reading only
// after a while, and the batch is larger than the pipe's buffer.
func TestFileSinkStopsRawWritesAfterOneSlept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pcapng")
	s := openSink(t, fileURL(path), Options{})
	fs := s.(*fileSink)

	// A quick raw write into the file does not switch.
	if err := s.Send(context.Background(), records(100, 0, 1)); err != nil {
		t.Fatal(err)
	}
	if !fs.slowUntil.IsZero() {
		t.Fatalf("after a write into the page cache: writes go through the scheduler until %v, want raw writes still", fs.slowUntil)
	}

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil { // blocking, unlike os.Pipe's
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(p[0]), "pipe-r"), os.NewFile(uintptr(p[1]), "pipe-w")
	defer r.Close()
	reader := exec.Command("sh", "-c", "sleep 0.3; exec cat >/dev/null")
	reader.Stdin = r
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	file := fs.f
	fs.f = w
	err := s.Send(context.Background(), records(3000, 100, 2)) // about 240 KiB: more than the pipe holds
	fs.f = file
	w.Close()
	if werr := reader.Wait(); werr != nil {
		t.Errorf("the pipe's reader: %v", werr)
	}
	if err != nil {
		t.Fatalf("Send into the pipe: %v", err)
	}
	if until := time.Until(fs.slowUntil); until <= 0 || until > slowPeriod {
		t.Fatalf("after a raw write that slept: writes go through the scheduler for %v more, want up to %v", until, slowPeriod)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
