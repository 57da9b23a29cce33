package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/connscope/connscope/packet"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzReader from the seed builders")

// fuzzSeeds are small valid captures of every format and link type, and
// two real ones.
func fuzzSeeds() map[string][]byte {
	r4 := rec4(packet.SYN, 0, linuxSYN...)
	r6 := rec6(packet.PSH|packet.ACK, 100, 1, 1, 8)
	p4, p6 := ip(r4), ip(r6)
	le, be := binary.LittleEndian, binary.BigEndian
	seeds := map[string][]byte{
		"pcap-le-us-ethernet": pcapFile(le, false, 1, frame{ts: 1e9, data: ether(0x0800, p4, 0x8100)}, frame{ts: 2e9, data: ether(0x0806, make([]byte, 28))}),
		"pcap-be-ns-raw":      pcapFile(be, true, 101, frame{ts: 1, data: p6}, frame{ts: 2, data: udp4()}),
		"pcap-ipv4-ipv6":      pcapFile(le, true, 228, frame{ts: 1, data: p4}),
		"pcap-sll":            pcapFile(be, false, 113, frame{ts: 1e9, data: sll(0x86dd, p6)}),
		"pcap-sll2":           pcapFile(le, false, 276, frame{ts: 1e9, data: sll2(0x0800, p4)}),
		"pcap-nflog-le":       pcapFile(le, false, 239, frame{ts: 1e9, data: nflogFrame(le, p4, 5e9)}),
		"pcap-nflog-be":       pcapFile(be, false, 239, frame{ts: 1e9, data: nflogFrame(be, p6, 0)}),
		"pcap-null":           pcapFile(le, false, 0, frame{ts: 1e9, data: append(le.AppendUint32(nil, 2), p4...)}, frame{ts: 2e9, data: append(be.AppendUint32(nil, 30), p6...)}),
		"pcap-loop":           pcapFile(be, false, 108, frame{ts: 1e9, data: append(be.AppendUint32(nil, 24), p6...)}),
		"pcap-pppoe-mpls":     pcapFile(le, false, 1, frame{ts: 1e9, data: ether(0x8864, append([]byte{0x11, 0, 0, 1, 0, 0, 0, 0x21}, p4...))}, frame{ts: 2e9, data: ether(0x8847, append([]byte{0, 0x11, 0x01, 64}, p6...))}),
		"pcap-ppp":            pcapFile(be, false, 9, frame{ts: 1e9, data: append([]byte{0xff, 0x03, 0x00, 0x21}, p4...)}, frame{ts: 2e9, data: append([]byte{0x57}, p6...)}),
		"pcap-chdlc":          pcapFile(le, false, 104, frame{ts: 1e9, data: append([]byte{0x0f, 0, 0x08, 0}, p4...)}),
		"pcap-truncated":      pcapFile(le, false, 1, frame{ts: 1e9, data: ether(0x0800, p4)})[:70],
	}
	a := ng{o: le}
	a.shb().idb(1, 0).idb(276, 0, tsresol(0x8a)).block(4, []byte{0, 0, 0, 0}).
		epb(0, 1, ether(0x86dd, p6), 0).epb(1, 2, sll2(0x0800, p4), 0).pb(0, 3, ether(0x0800, p4), 0)
	b := ng{o: be}
	b.shb().idb(239, 0, tsresol(9), b.tsoffset(10)).spb(nflogFrame(be, p4, 0), 0).epb(0, 4, nflogFrame(le, p6, 0), 0)
	seeds["pcapng-le"] = a.bytes()
	seeds["pcapng-be"] = b.bytes()
	seeds["pcapng-two-sections"] = append(append([]byte(nil), a.bytes()...), b.bytes()...)
	// Two files tcpdump and editcap wrote (see TestSavedRealCaptures).
	for _, f := range []string{"nflog.pcap", "sll2.pcapng"} {
		if data, err := os.ReadFile(filepath.Join("testdata", "real", f)); err == nil {
			seeds["real-"+f] = data
		}
	}
	return seeds
}

func FuzzReader(f *testing.F) {
	// The seeds are in testdata/fuzz/FuzzReader (see -update-seeds).
	f.Fuzz(func(t *testing.T, data []byte) {
		checkReader(t, data)
	})
}

// checkReader reads data as a capture file with Next and with NextFrame
// and checks that it ends in io.EOF, a *FormatError or (for Next) goes on
// past *LinkTypeError, with consistent counts.
func checkReader(t *testing.T, data []byte) {
	r, err := NewReader(bytes.NewReader(data), "fuzz")
	if err != nil {
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("NewReader: error of no known class: %v", err)
		}
		return
	}
	var linkErrs int64
	for {
		var rec packet.Record
		err := r.Next(&rec)
		var lte *LinkTypeError
		var fe *FormatError
		switch {
		case err == nil:
			if rec.IPVersion != 4 && rec.IPVersion != 6 {
				t.Fatalf("record with IP version %d", rec.IPVersion)
			}
			continue
		case errors.As(err, &lte):
			linkErrs++
			continue
		case err == io.EOF, errors.As(err, &fe):
		default:
			t.Fatalf("Next: error of no known class: %v", err)
		}
		break
	}
	st := r.Stats()
	if st.Frames != st.TCP+st.SkippedNonTCP+st.SkippedUndecodable+linkErrs {
		t.Fatalf("stats do not add up: %+v, %d unsupported", st, linkErrs)
	}
	if st.Bytes < 0 || st.Bytes > int64(len(data)) {
		t.Fatalf("%d bytes consumed of %d", st.Bytes, len(data))
	}

	r, _ = NewReader(bytes.NewReader(data), "fuzz")
	var frames int64
	for {
		_, _, _, err := r.NextFrame()
		if err == nil {
			frames++
			continue
		}
		var fe *FormatError
		if err != io.EOF && !errors.As(err, &fe) {
			t.Fatalf("NextFrame: error of no known class: %v", err)
		}
		break
	}
	if frames != st.Frames {
		t.Fatalf("NextFrame read %d frames, Next %d", frames, st.Frames)
	}
}

// TestFuzzSeeds checks the committed seed corpus against the builders,
// and rewrites it with -update-seeds.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReader")
	for name, data := range fuzzSeeds() {
		checkReader(t, data)
		path := filepath.Join(dir, name)
		want := "go test fuzz v1\n[]byte(" + strconv.Quote(string(data)) + ")\n"
		if *updateSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestFuzzSeeds -update-seeds)", err)
		}
		if string(got) != want {
			t.Errorf("%s differs from its builder (run go test -run TestFuzzSeeds -update-seeds)", path)
		}
	}
}
