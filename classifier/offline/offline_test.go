package offline

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

// Reading a capture allocates nothing per packet: the engine reads
// millions of them, and an allocation each (an errors.As target that
// escaped, once) costs more than a tenth of the time classify takes.
func TestReadingPacketsDoesNotAllocate(t *testing.T) {
	var buf bytes.Buffer
	w, err := capture.NewPcapWriter(&buf, capture.LinkTypeRaw, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	var data []byte
	for i := range n {
		r := packet.Record{Timestamp: 1_700_000_000_000_000_000 + int64(i)*1000, IPVersion: 4, SrcPort: uint16(1024 + i), DstPort: 443,
			Flags: packet.SYN, Seq: uint32(i), TTL: 64, Window: 64240}
		r.SrcIP = [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 7}
		r.DstIP = [16]byte{10: 0xff, 11: 0xff, 12: 203, 13: 0, 14: 113, 15: 10}
		data = capture.AppendPacket(data[:0], &r)
		if err := w.WritePacket(r.Timestamp, data, len(data)); err != nil {
			t.Fatal(err)
		}
	}
	name := filepath.Join(t.TempDir(), "syns.pcap")
	if err := os.WriteFile(name, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer s.closer.Close()
	read := 0
	allocs := testing.AllocsPerRun(n/2-1, func() {
		if s.advance() {
			read++
		}
	})
	if s.err != nil {
		t.Fatal(s.err)
	}
	if read < n/2 {
		t.Fatalf("read %d packets, want at least %d", read, n/2)
	}
	if allocs != 0 {
		t.Errorf("%.2f allocations per packet read, want 0", allocs)
	}
}
