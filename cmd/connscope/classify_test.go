package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/internal/clitest"
	"github.com/connscope/connscope/packet"
)

var base = time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC).UnixNano()

// writeCapture writes connections as a raw-IP pcap file: one per client
// port, each a string of flags ("S", "A", "PA", "R", "RA", "FA") 10 ms
// apart, connections 1 ms apart.
func writeCapture(t *testing.T, conns map[uint16][]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := capture.NewPcapWriter(f, 101, 262144, true)
	if err != nil {
		t.Fatal(err)
	}
	ports := make([]uint16, 0, len(conns))
	for p := range conns {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	type ev struct {
		ts  int64
		rec packet.Record
	}
	var evs []ev
	for i, port := range ports {
		seq := uint32(1000)
		for j, fl := range conns[port] {
			r := packet.Record{SrcPort: port, DstPort: 443, TTL: 64, IPID: uint16(j + 1), Window: 64240}
			r.SetSrc(netip.MustParseAddr("192.0.2.1"))
			r.SetDst(netip.MustParseAddr("198.51.100.2"))
			for _, c := range fl {
				r.Flags |= map[rune]packet.Flags{'S': packet.SYN, 'A': packet.ACK, 'P': packet.PSH, 'R': packet.RST, 'F': packet.FIN}[c]
			}
			r.Seq = seq
			if r.Flags.Has(packet.SYN) {
				seq++
			}
			if r.Flags.Has(packet.PSH) {
				r.PayloadLen = 50
				seq += 50
			}
			if r.Flags.Has(packet.RST) {
				r.IPID = 0
			}
			r.Timestamp = base + int64(i)*int64(time.Millisecond) + int64(j)*int64(10*time.Millisecond)
			evs = append(evs, ev{r.Timestamp, r})
		}
	}
	slices.SortStableFunc(evs, func(a, b ev) int { return int(a.ts - b.ts) })
	for _, e := range evs {
		b := capture.BuildPacket(&e.rec)
		if err := w.WritePacket(e.ts, b, len(b)+int(e.rec.PayloadLen)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errb.String(), err
}

func TestJSONHasExactlyTheContractKeys(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{
		40001: {"S", "A", "PA", "R"},
		40002: {"S", "S"},
	})
	out, _, err := runCLI(t, "classify", "--format", "json", path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), out)
	}
	want := []string{"dst_ip", "dst_port", "excluded", "first_seen", "ip_version", "last_seen", "packets", "signature", "src_ip", "src_port", "stage", "tags"}
	byPort := map[float64]map[string]any{}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, want) {
			t.Fatalf("keys %v, want %v", keys, want)
		}
		byPort[m["src_port"].(float64)] = m
	}
	a := byPort[40001]
	if a["stage"] != "post_psh" || a["signature"] != "PSH+ACK → RST" || a["excluded"] != "" || a["packets"] != 4.0 ||
		a["src_ip"] != "192.0.2.1" || a["dst_ip"] != "198.51.100.2" || a["ip_version"] != 4.0 {
		t.Errorf("post_psh connection: %v", a)
	}
	if a["first_seen"] != "2026-11-24T10:00:00.123456789Z" || a["last_seen"] != "2026-11-24T10:00:00.153456789Z" {
		t.Errorf("times %v %v", a["first_seen"], a["last_seen"])
	}
	if tags := a["tags"].([]any); len(tags) != 2 || tags[0] != "reset" || tags[1] != "single_rst" {
		t.Errorf("tags %v", tags)
	}
	b := byPort[40002]
	if b["stage"] != "" || b["excluded"] != "multiple_syn" || len(b["tags"].([]any)) != 0 || b["signature"] != "" {
		t.Errorf("excluded connection: %v", b)
	}
}

func TestRadarSummaryShape(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{
		40001: {"S", "R"},
		40002: {"S", "A", "PA", "A", "FA"},
		40003: {"S", "A", "PA", "PA", "RA"},
		40004: {"S", "A"},
	})
	out, _, err := runCLI(t, "classify", "--format", "radar", path)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Success bool `json:"success"`
		Result  struct {
			Meta struct {
				DateRange []struct {
					StartTime string `json:"startTime"`
				} `json:"dateRange"`
				Normalization string `json:"normalization"`
			} `json:"meta"`
			Summary0   map[string]string `json:"summary_0"`
			Tags       map[string]int    `json:"tags"`
			Signatures map[string]int    `json:"signatures"`
			Excluded   map[string]int    `json:"excluded"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// 40004 is silent for less than the idle timeout when the input ends:
	// incomplete, so the shares are of the three others.
	want := map[string]string{"post_syn": "33.333", "post_ack": "0.000", "post_psh": "0.000", "later_in_flow": "33.333", "no_match": "33.333"}
	if !r.Success || !maps(r.Result.Summary0, want) || r.Result.Meta.Normalization != "PERCENTAGE" || len(r.Result.Meta.DateRange) != 1 {
		t.Fatalf("got %s", out)
	}
	if r.Result.Tags["reset"] != 2 || r.Result.Tags["timeout"] != 0 || r.Result.Signatures["SYN → RST"] != 1 ||
		r.Result.Signatures["PSH+ACK; Data → RST+ACK"] != 1 || r.Result.Excluded["incomplete"] != 1 {
		t.Errorf("counts: tags %v signatures %v", r.Result.Tags, r.Result.Signatures)
	}
	if _, ok := r.Result.Excluded["multiple_syn"]; !ok {
		t.Errorf("exclusion counts missing: %v", r.Result.Excluded)
	}
	// With an idle timeout shorter than its silence, the same connection times out: the idle
	// timeout is what decides.
	out, _, err = runCLI(t, "classify", "--format", "radar", "--idle-timeout", "25ms", path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"post_ack": "25.000"`) {
		t.Errorf("with a 25ms idle timeout the SYN;ACK connection should be a post_ack timeout:\n%s", out)
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestTruncatedFileReportsOffsetAfterTheConnectionsBeforeIt(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{
		40001: {"S", "R"},
		40002: {"S", "A", "PA", "R"},
	})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Cut in the middle of the last record.
	if err := os.WriteFile(path, data[:len(data)-10], 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "classify", "--format", "json", path)
	if err == nil {
		t.Fatal("no error for a truncated file")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "byte ") {
		t.Errorf("error %q does not name the file and the byte offset", err)
	}
	if !strings.Contains(out, `"src_port":40001`) || !strings.Contains(out, `"src_port":40002`) {
		t.Errorf("connections before the bad record were not reported:\n%s", out)
	}
}

func TestBadFlagsAreRejectedWithTheirName(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{40001: {"S"}})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"classify", "--format", "xml", path}, "--format"},
		{[]string{"classify", "--packet-cap", "0", path}, "packet cap"},
		{[]string{"classify", "--packet-cap", "65", path}, "packet cap"},
		{[]string{"classify", "--idle-timeout", "-1s", path}, "idle timeout"},
		{[]string{"classify"}, "requires at least 1 arg"},
		{[]string{"classify", filepath.Join(t.TempDir(), "missing.pcap")}, "no such file"},
		{[]string{"classify", "-", path, "-"}, `standard input ("-") is named 2 times`},
		{[]string{"classify", "--cpu-profile", filepath.Join(t.TempDir(), "no", "dir", "cpu.pprof"), path}, "--cpu-profile"},
	} {
		out, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
		if tc.want != "no such file" && out != "" {
			t.Errorf("%v: rejected, but wrote a result:\n%s", tc.args, out)
		}
	}
}

// TestCPUProfileIsWritten: --cpu-profile leaves a profile in Go's format
// (gzipped protocol buffer, what go tool pprof and go build -pgo read), and
// the output is the run's as without it.
func TestCPUProfileIsWritten(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{40001: {"S", "A", "PA", "R"}, 40002: {"S"}})
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	with, _, err := runCLI(t, "classify", "--format", "json", "--cpu-profile", prof, path)
	if err != nil {
		t.Fatal(err)
	}
	without, _, err := runCLI(t, "classify", "--format", "json", path)
	if err != nil {
		t.Fatal(err)
	}
	if with != without {
		t.Errorf("output with --cpu-profile:\n%s\nwithout:\n%s", with, without)
	}
	f, err := os.Open(prof)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("profile is not gzipped: %v", err)
	}
	b, err := io.ReadAll(z)
	if err != nil || len(b) == 0 {
		t.Fatalf("profile: %d bytes, %v", len(b), err)
	}
}

// TestGzipAndStandardInputClassifyAsThePlainFile: a .pcap.gz and a capture
// piped in as "-" give the plain file's connections, merged with other
// files as usual.
func TestGzipAndStandardInputClassifyAsThePlainFile(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{
		40001: {"S", "R"},
		40002: {"S", "A", "PA", "R"},
		40003: {"S", "A", "PA", "FA"},
	})
	other := writeCapture(t, map[uint16][]string{41001: {"S", "A", "RA"}})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()
	gzPath := filepath.Join(t.TempDir(), "in.pcap.gz")
	if err := os.WriteFile(gzPath, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	want, _, err := runCLI(t, "classify", "--format", "json", path, other)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(want, "\n") != 4 {
		t.Fatalf("the plain files gave %d connections, not 4:\n%s", strings.Count(want, "\n"), want)
	}
	got, _, err := runCLI(t, "classify", "--format", "json", gzPath, other)
	if err != nil || got != want {
		t.Errorf("the gzip file: error %v, output\n%s\nwant\n%s", err, got, want)
	}

	clitest.StdinFrom(t, gz.Bytes())
	got, _, err = runCLI(t, "classify", "--format", "json", "-", other)
	if err != nil || got != want {
		t.Errorf("gzip on standard input: error %v, output\n%s\nwant\n%s", err, got, want)
	}
}

func TestTableListsAnomalousConnections(t *testing.T) {
	path := writeCapture(t, map[uint16][]string{
		40001: {"S", "A", "PA", "R"},
		40002: {"S", "A", "PA", "A", "FA"},
	})
	out, _, err := runCLI(t, "classify", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Connections: 2 classified", "post_psh", "50.000", "PSH+ACK → RST", "192.0.2.1:40001 -> 198.51.100.2:443", "Anomalous connections (1)"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// A pcapng file whose second interface has a link type connscope cannot
// strip (BSD loopback, 0): its frames are skipped and counted, the frames
// of the other interface before and after them are classified, and the
// error names the file, the offset and the link type.
func TestUnsupportedInterfaceIsSkippedNotTheFile(t *testing.T) {
	var buf bytes.Buffer
	w, err := capture.NewPcapngWriter(&buf, 101, 0)
	if err != nil {
		t.Fatal(err)
	}
	write := func(port uint16, flags packet.Flags, at int64) {
		r := packet.Record{SrcPort: port, DstPort: 443, TTL: 64, Flags: flags, Seq: 1000, Timestamp: base + at}
		r.SetSrc(netip.MustParseAddr("192.0.2.1"))
		r.SetDst(netip.MustParseAddr("198.51.100.2"))
		b := capture.BuildPacket(&r)
		if err := w.WritePacket(r.Timestamp, b, len(b)); err != nil {
			t.Fatal(err)
		}
	}
	le := binary.LittleEndian
	write(40001, packet.SYN, 0)
	// Interface 1: link type 147 (LINKTYPE_USER0, private use), then one
	// Enhanced Packet Block on it.
	idb := make([]byte, 20)
	le.PutUint32(idb[0:4], 1)
	le.PutUint32(idb[4:8], 20)
	le.PutUint16(idb[8:10], 147)
	le.PutUint32(idb[12:16], 65535)
	le.PutUint32(idb[16:20], 20)
	buf.Write(idb)
	epb := make([]byte, 32+8)
	le.PutUint32(epb[0:4], 6)
	le.PutUint32(epb[4:8], uint32(len(epb)))
	le.PutUint32(epb[8:12], 1)
	le.PutUint32(epb[20:24], 8)
	le.PutUint32(epb[24:28], 8)
	le.PutUint32(epb[len(epb)-4:], uint32(len(epb)))
	buf.Write(epb)
	write(40001, packet.RST, int64(time.Millisecond))
	write(40002, packet.SYN, int64(2*time.Millisecond))
	path := filepath.Join(t.TempDir(), "mixed.pcapng")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := runCLI(t, "classify", "--format", "json", "--stats", path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "link type 147 is not supported") ||
		!strings.Contains(err.Error(), "1 frames of unsupported link types skipped") {
		t.Errorf("error %v: want the file, the link type and the count", err)
	}
	if !strings.Contains(out, `"src_port":40001`) || !strings.Contains(out, `"src_port":40002`) || !strings.Contains(out, `"stage":"post_syn"`) {
		t.Errorf("the other interface's connections were not all classified:\n%s", out)
	}
	if !strings.Contains(stderr, `"skipped_unsupported_link_type":1`) {
		t.Errorf("--stats does not count the skipped frame: %s", stderr)
	}
}

// TestInterruptFinishesStandardInput: with "-" among the files, an
// interrupt (Ctrl-C on tcpdump -w - | connscope classify -) does not kill
// classify: it reads on to the end of its input and reports every
// connection. The test sends SIGINT to its own process; without the
// handler that kills the test binary, which fails the test.
func TestInterruptFinishesStandardInput(t *testing.T) {
	conns := map[uint16][]string{}
	for p := range 20000 {
		conns[uint16(20000+p)] = []string{"S", "R"}
	}
	data, err := os.ReadFile(writeCapture(t, conns))
	if err != nil {
		t.Fatal(err)
	}
	pw := clitest.Stdin(t)

	cmd := newRootCommand()
	var out bytes.Buffer
	var errb clitest.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs([]string{"classify", "-"})
	res := make(chan error, 1)
	go func() { res <- cmd.Execute() }()

	// More than the pipe and the reader's first buffers hold: once this
	// write returns, classify is reading, so its handler is in place.
	const first = 3 << 19
	if len(data) <= first {
		t.Fatalf("the capture is %d bytes: too small for the test", len(data))
	}
	if _, err := pw.Write(data[:first]); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errb.String(), "interrupted: finishing when standard input ends") {
		if time.Now().After(deadline) {
			t.Fatalf("no word of the interrupt on stderr: %q", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := pw.Write(data[first:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-res; err != nil {
		t.Fatalf("classify: %v", err)
	}
	if !strings.Contains(out.String(), "Connections: 20000 classified") {
		t.Errorf("not every connection reported after the interrupt:\n%s", out.String())
	}
}

// A capture out of timestamp order by more than one place (here a SYN
// written after two later packets of its connection) cannot be ordered
// exactly by the streaming engine: classify says so, on standard error for
// json and radar and in the table, and names the fix.
func TestOutOfOrderCaptureIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "unordered.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := capture.NewPcapWriter(f, 101, 262144, true)
	if err != nil {
		t.Fatal(err)
	}
	// In order: SYN (0 ms), ACK (10), PSH+ACK (20), RST (30); written ACK,
	// PSH+ACK, SYN, RST.
	for _, p := range []struct {
		at    int
		flags packet.Flags
		seq   uint32
	}{
		{10, packet.ACK, 1001}, {20, packet.PSH | packet.ACK, 1001}, {0, packet.SYN, 1000}, {30, packet.RST, 1051},
	} {
		r := packet.Record{SrcPort: 40001, DstPort: 443, TTL: 64, Window: 64240, Flags: p.flags, Seq: p.seq}
		r.SetSrc(netip.MustParseAddr("192.0.2.1"))
		r.SetDst(netip.MustParseAddr("198.51.100.2"))
		if p.flags.Has(packet.PSH) {
			r.PayloadLen = 50
		}
		ts := base + int64(p.at)*int64(time.Millisecond)
		b := capture.BuildPacket(&r)
		if err := w.WritePacket(ts, b, len(b)+int(r.PayloadLen)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	const warning = "1 connections had a packet older than packets of theirs already taken"
	for _, format := range []string{"json", "radar"} {
		_, stderr, err := runCLI(t, "classify", "--format", format, path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(stderr, "connscope classify: warning: "+warning) || !strings.Contains(stderr, "reordercap") {
			t.Errorf("--format %s: standard error lacks the warning:\n%s", format, stderr)
		}
	}
	out, _, err := runCLI(t, "classify", path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Warning: "+warning) {
		t.Errorf("the table lacks the warning:\n%s", out)
	}
	// An ordered capture has none.
	_, stderr, err := runCLI(t, "classify", "--format", "json", writeCapture(t, map[uint16][]string{40001: {"S", "A", "PA", "R"}}))
	if err != nil || strings.Contains(stderr, "warning") {
		t.Errorf("an ordered capture: err %v, standard error %q", err, stderr)
	}
}
