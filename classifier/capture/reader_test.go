package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/connscope/connscope/packet"
)

func TestLinkTypes(t *testing.T) {
	r4 := rec4(packet.SYN, 0, linuxSYN...)
	r6 := rec6(packet.PSH|packet.ACK, 300, 1, 1, 8)
	p4, p6 := ip(r4), ip(r6)
	le, be := binary.LittleEndian, binary.BigEndian
	tests := []struct {
		name     string
		linkType uint32
		frame    []byte
		want     packet.Record
	}{
		{"Ethernet IPv4", 1, ether(0x0800, p4), r4},
		{"Ethernet IPv6", 1, ether(0x86dd, p6), r6},
		{"Ethernet 802.1Q", 1, ether(0x0800, p4, 0x8100), r4},
		{"Ethernet 802.1ad QinQ", 1, ether(0x86dd, p6, 0x88a8, 0x8100), r6},
		{"Ethernet 0x9100 QinQ", 1, ether(0x0800, p4, 0x9100, 0x8100), r4},
		{"Ethernet with minimum-frame padding", 1, append(ether(0x0800, p4), make([]byte, 20)...), r4},
		{"raw IP 101 IPv4", 101, p4, r4},
		{"raw IP 101 IPv6", 101, p6, r6},
		{"raw IP 12", 12, p4, r4},
		{"raw IP 14", 14, p6, r6},
		{"IPv4 228", 228, p4, r4},
		{"IPv6 229", 229, p6, r6},
		{"Linux SLL IPv4", 113, sll(0x0800, p4), r4},
		{"Linux SLL IPv6", 113, sll(0x86dd, p6), r6},
		{"Linux SLL2 IPv4", 276, sll2(0x0800, p4), r4},
		{"Linux SLL2 IPv6", 276, sll2(0x86dd, p6), r6},
		{"NFLOG little-endian TLVs", 239, nflogFrame(le, p4, 0), r4},
		{"NFLOG big-endian TLVs", 239, nflogFrame(be, p6, 0), r6},
		{"NFLOG payload only", 239, nflog(le, 2, tlv{9, p4}), r4},
		{"NFLOG payload first, big-endian", 239, nflog(be, 2, tlv{9, p4}, tlv{10, []byte("x\x00")}), r4},
		{"NFLOG with NFULA_TIMESTAMP keeps the record time", 239, nflogFrame(le, p4, 99e9), r4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, nano := range []bool{false, true} {
				file := pcapFile(le, nano, tt.linkType, frame{ts: 1700000000123456000, data: tt.frame, orig: len(tt.frame) + int(tt.want.PayloadLen)})
				recs, st, err := readAll(t, file)
				if err != io.EOF {
					t.Fatalf("err = %v, want io.EOF", err)
				}
				if len(recs) != 1 {
					t.Fatalf("%d records, want 1; stats %+v", len(recs), st)
				}
				want := tt.want
				want.Timestamp = 1700000000123456000
				if recs[0] != want {
					t.Errorf("got  %v\nwant %v", &recs[0], &want)
				}
			}
		})
	}
}

func TestNFLOGTimestampUsedOnlyWithoutRecordTime(t *testing.T) {
	p := ip(rec4(packet.SYN, 0))
	var n ng
	n.o = binary.LittleEndian
	n.shb().idb(239, 0).spb(nflogFrame(binary.BigEndian, p, 1700000000250000000), 0)
	n.epb(0, 1234, nflogFrame(binary.BigEndian, p, 1700000000250000000), 0)
	recs, _, err := readAll(t, n.bytes())
	if err != io.EOF || len(recs) != 2 {
		t.Fatalf("%d records, err %v", len(recs), err)
	}
	if recs[0].Timestamp != 1700000000250000000 {
		t.Errorf("simple packet block (no time): timestamp %d, want NFULA_TIMESTAMP's", recs[0].Timestamp)
	}
	if recs[1].Timestamp != 1234000 {
		t.Errorf("enhanced packet block: timestamp %d, want the block's 1234 µs", recs[1].Timestamp)
	}
}

func TestNFLOGByteOrderChangesBetweenFrames(t *testing.T) {
	p := ip(rec4(packet.SYN, 0))
	file := pcapFile(binary.LittleEndian, false, 239,
		frame{ts: 1e9, data: nflogFrame(binary.LittleEndian, p, 0)},
		frame{ts: 2e9, data: nflogFrame(binary.BigEndian, p, 0)},
		frame{ts: 3e9, data: nflogFrame(binary.LittleEndian, p, 0)})
	recs, st, err := readAll(t, file)
	if err != io.EOF || len(recs) != 3 {
		t.Fatalf("%d records, err %v, stats %+v", len(recs), err, st)
	}
}

func TestPcapByteOrdersAndResolutions(t *testing.T) {
	r := rec4(packet.RST|packet.ACK, 0)
	for _, o := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		for _, nano := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v nano=%v", o, nano), func(t *testing.T) {
				const ts = 1700000000123456789
				file := pcapFile(o, nano, 101, frame{ts: ts, data: ip(r)}, frame{ts: ts + 1e9, data: ip(r)})
				recs, _, err := readAll(t, file)
				if err != io.EOF || len(recs) != 2 {
					t.Fatalf("%d records, err %v", len(recs), err)
				}
				want := int64(ts)
				if !nano {
					want = ts / 1000 * 1000
				}
				if recs[0].Timestamp != want || recs[1].Timestamp != want+1e9 {
					t.Errorf("timestamps %d, %d; want %d, %d", recs[0].Timestamp, recs[1].Timestamp, want, want+1e9)
				}
				w := r
				w.Timestamp = recs[0].Timestamp
				if recs[0] != w {
					t.Errorf("got %v, want %v", &recs[0], &w)
				}
			})
		}
	}
}

func TestPcapngSectionsAndInterfaces(t *testing.T) {
	r4 := rec4(packet.SYN, 0, linuxSYN...)
	r6 := rec6(packet.ACK, 0)
	p4, p6 := ip(r4), ip(r6)

	// Section 1, little-endian: Ethernet with default µs resolution, raw
	// IP with ns resolution; other block types in between.
	a := ng{o: binary.LittleEndian}
	a.shb().
		idb(1, 65535).
		idb(101, 0, tsresol(9)).
		block(4, []byte{0, 0, 0, 0}).      // name resolution block
		block(0x40000bad, []byte("cust")). // custom block
		epb(0, 1700000000123456, ether(0x0800, p4), 0).
		epb(1, 1700000000987654321, p6, 0).
		pb(0, 1700000001000000, ether(0x86dd, p6), 0).
		block(5, make([]byte, 12)) // interface statistics block
	// Section 2, big-endian: new interfaces. SLL2 with 2^-10 s units;
	// NFLOG in ms with a 1000 s offset; Ethernet for a simple packet block.
	b := ng{o: binary.BigEndian}
	b.shb().
		idb(1, 128).
		idb(276, 0, tsresol(0x8a)).
		idb(239, 0, tsresol(3), b.tsoffset(1000)).
		epb(1, 5*1024+512, sll2(0x0800, p4), 0).
		epb(2, 1500, nflogFrame(binary.LittleEndian, p6, 0), 0).
		spb(ether(0x0800, p4), 200)
	file := append(append([]byte(nil), a.bytes()...), b.bytes()...)

	recs, st, err := readAll(t, file)
	if err != io.EOF {
		t.Fatalf("err = %v", err)
	}
	wantTS := []int64{1700000000123456000, 1700000000987654321, 1700000001000000000, 5500000000, 1001500000000, 0}
	wantRec := []packet.Record{r4, r6, r6, r4, r6, r4}
	if len(recs) != len(wantTS) {
		t.Fatalf("%d records, want %d; stats %+v", len(recs), len(wantTS), st)
	}
	for i := range recs {
		w := wantRec[i]
		w.Timestamp = wantTS[i]
		if recs[i] != w {
			t.Errorf("record %d:\ngot  %v\nwant %v", i, &recs[i], &w)
		}
	}
	if st.Frames != 6 || st.TCP != 6 || st.Bytes != int64(len(file)) {
		t.Errorf("stats %+v", st)
	}
}

func TestTimestampResolutions(t *testing.T) {
	tests := []struct {
		resol byte
		units uint64
		want  int64
	}{
		{0, 3, 3e9},
		{6, 1500000, 1500000000},
		{9, 123, 123},
		{10, 12345, 1234},
		{12, 5e12, 5e9},
		{0x80, 2, 2e9},       // 2^0
		{0x94, 3 << 20, 3e9}, // 2^-20
		{0xc0, 1 << 63, 5e8}, // 2^-64 s units: 2^63 of them are 0.5 s
		{100, 1 << 60, 0},
	}
	for _, tt := range tests {
		var f iface
		f.mul, f.div, f.shift = tsResolution(tt.resol)
		if got := f.nanos(tt.units); got != tt.want {
			t.Errorf("if_tsresol 0x%02x, %d units: %d ns, want %d", tt.resol, tt.units, got, tt.want)
		}
	}
}

func TestSkippedFramesAreCounted(t *testing.T) {
	tcp := ip(rec4(packet.SYN, 0))
	truncated := ip(rec4(packet.SYN, 0, linuxSYN...))[:35] // TCP's fixed header cut
	frag := ip(rec4(packet.ACK, 0))
	binary.BigEndian.PutUint16(frag[6:8], 100) // fragment offset 800 bytes
	arp := ether(0x0806, make([]byte, 28))
	frames := []frame{
		{data: ether(0x0800, tcp)},
		{data: arp},
		{data: ether(0x0800, udp4())},
		{data: ether(0x0800, icmp4())},
		{data: ether(0x86dd, func() []byte { b := ip(rec6(packet.ACK, 0)); b[6] = 58; return b }())},
		{data: ether(0x0800, frag)},
		{data: ether(0x0800, truncated)},
		{data: ether(0x86dd, tcp)},              // version and EtherType disagree
		{data: ether(0x0800, nil)},              // nothing after the Ethernet header
		{data: []byte{1, 2, 3}},                 // shorter than an Ethernet header
		{data: ether(0x0800, tcp, 0x8100)[:16]}, // VLAN tag cut
		{data: ether(0x0800, tcp)},
	}
	for i := range frames {
		frames[i].ts = int64(i) * 1e9
	}
	recs, st, err := readAll(t, pcapFile(binary.LittleEndian, false, 1, frames...))
	if err != io.EOF {
		t.Fatal(err)
	}
	want := Stats{Frames: 12, TCP: 2, SkippedNonTCP: 5, SkippedUndecodable: 5}
	st.Bytes = 0
	if len(recs) != 2 || st != want {
		t.Errorf("%d records, stats %+v; want 2, %+v", len(recs), st, want)
	}
}

func TestNFLOGUndecodable(t *testing.T) {
	p := ip(rec4(packet.SYN, 0))
	bad := [][]byte{
		{2, 0, 0},    // short header
		{2, 1, 0, 0}, // version 1
		nflog(binary.LittleEndian, 2, tlv{1, []byte{8, 0, 3, 0}}),    // no payload TLV
		append([]byte{2, 0, 0, 0}, 2, 0, 9, 0),                       // TLV length 2
		nflog(binary.LittleEndian, 2, tlv{9, nil}),                   // empty payload
		nflog(binary.LittleEndian, 2, tlv{0x0400 | 9, p}),            // type out of range in both orders
		append(nflog(binary.LittleEndian, 2, tlv{9, p}), 1, 0, 0, 0), // TLV of length 1 after the payload
	}
	var frames []frame
	for _, b := range bad {
		frames = append(frames, frame{data: b})
	}
	recs, st, err := readAll(t, pcapFile(binary.LittleEndian, false, 239, frames...))
	if err != io.EOF || len(recs) != 0 || st.SkippedUndecodable != int64(len(bad)) {
		t.Errorf("%d records, err %v, stats %+v; want every frame undecodable", len(recs), err, st)
	}
}

func TestUnsupportedLinkTypeNamedWhenRead(t *testing.T) {
	p := ip(rec4(packet.SYN, 0))
	n := ng{o: binary.LittleEndian}
	n.shb().idb(1, 0).idb(147, 0).epb(0, 1, ether(0x0800, p), 0)
	before := n.buf.Len()
	n.epb(1, 2, []byte{1, 2, 3}, 0).epb(0, 3, ether(0x0800, p), 0)
	r, err := NewReader(bytes.NewReader(n.bytes()), "mixed.pcapng")
	if err != nil {
		t.Fatal(err)
	}
	var rec packet.Record
	if err := r.Next(&rec); err != nil {
		t.Fatal(err)
	}
	err = r.Next(&rec)
	var lte *LinkTypeError
	if !errors.As(err, &lte) || lte.LinkType != 147 || lte.Offset != int64(before) {
		t.Fatalf("err = %v, want a LinkTypeError for 147 at byte %d", err, before)
	}
	if !strings.Contains(err.Error(), "mixed.pcapng: byte") || !strings.Contains(err.Error(), "link type 147") {
		t.Errorf("message %q does not name the file and link type", err)
	}
	if err := r.Next(&rec); err != nil || rec.Timestamp != 3000 {
		t.Errorf("after the unsupported frame: err %v, ts %d; want the next packet", err, rec.Timestamp)
	}
	if err := r.Next(&rec); err != io.EOF {
		t.Errorf("err = %v, want io.EOF", err)
	}
}

func TestFormatErrorMessage(t *testing.T) {
	file := pcapFile(binary.LittleEndian, false, 1, frame{ts: 1, data: make([]byte, 60)})
	file = binary.LittleEndian.AppendUint64(file, 0)
	file = binary.LittleEndian.AppendUint32(file, 0xffffffff)
	file = binary.LittleEndian.AppendUint32(file, 60)
	want := "capture.pcap: byte 100: record claims 4294967295 captured bytes; the file is corrupt or truncated"
	r, err := NewReader(bytes.NewReader(file), "capture.pcap")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, _, _, err = r.NextFrame(); err != nil {
			break
		}
	}
	if err == nil || err.Error() != want {
		t.Errorf("error %q\nwant  %q", err, want)
	}
	// The error sticks.
	if _, _, _, err2 := r.NextFrame(); err2 != err {
		t.Errorf("second call: %v", err2)
	}
}

func TestCorruptFiles(t *testing.T) {
	p := ether(0x0800, ip(rec4(packet.SYN, 0, linuxSYN...))) // 14+20+20+20 = 74 bytes
	pcap := pcapFile(binary.BigEndian, true, 1, frame{ts: 1, data: p}, frame{ts: 2, data: p})
	// pcap layout: header 0-23, record 1 at 24 (16 + 74), record 2 at 114, end 204.
	n := ng{o: binary.LittleEndian}
	n.shb().idb(1, 0)
	idbEnd := n.buf.Len()
	n.epb(0, 1, p, 0)
	epb2 := n.buf.Len()
	n.epb(0, 2, p, 0)
	ngFile := n.bytes()
	shbLen := 28 + 16 // with the userappl option

	patch := func(b []byte, off int, v uint32) []byte {
		c := append([]byte(nil), b...)
		binary.LittleEndian.PutUint32(c[off:], v)
		return c
	}
	tests := []struct {
		name   string
		file   []byte
		offset int64
		reason string
	}{
		{"empty file", nil, 0, "empty file"},
		{"not a capture", []byte("hello, world, this is text"), 0, "neither pcap nor pcapng"},
		{"pcap cut in the file header", pcap[:20], 0, "24-byte pcap file header"},
		{"pcap cut in a record header", pcap[:24+10], 24, "record header (10 of 16 bytes)"},
		{"pcap cut in record data", pcap[:24+16+30], 24, "record of 74 captured bytes"},
		{"pcap cut in the second record", pcap[:114+20], 114, "record of 74 captured bytes"},
		{"pcap caplen above 256 KiB", func() []byte {
			c := append([]byte(nil), pcap...)
			binary.BigEndian.PutUint32(c[114+8:], 300000)
			return c
		}(), 114, "record claims 300000 captured bytes"},
		{"pcap major version 3", func() []byte { c := append([]byte(nil), pcap...); c[5] = 3; return c }(), 4, "major version 3"},
		{"pcapng cut in the section header", ngFile[:10], 0, "section header block"},
		{"pcapng cut in the interface block", ngFile[:shbLen+10], int64(shbLen), "block header"},
		{"pcapng cut in a packet block", ngFile[:epb2+50], int64(epb2), "block of 120 bytes"},
		{"pcapng bad byte-order magic", patch(ngFile, 8, 0x12345678), 0, "byte-order magic"},
		{"pcapng block length not a multiple of 4", patch(ngFile, idbEnd+4, 115), int64(idbEnd), "length of 115"},
		{"pcapng block length below 12", patch(ngFile, idbEnd+4, 8), int64(idbEnd), "length of 8"},
		{"pcapng start and end lengths differ", patch(ngFile, epb2-4, 124), int64(idbEnd), "120 at the start and 124 at the end"},
		{"pcapng packet of an undescribed interface", patch(ngFile, idbEnd+8, 3), int64(idbEnd), "interface 3"},
		{"pcapng caplen past the block", patch(ngFile, idbEnd+20, 200), int64(idbEnd), "claims 200 captured bytes"},
		{"pcapng huge block", patch(ngFile, idbEnd+4, 1<<30), int64(idbEnd), "claims 1073741824 bytes"},
		{"pcapng skipped block cut", append(append([]byte(nil), ngFile...), (&ng{o: binary.LittleEndian}).block(4, make([]byte, 100)).bytes()[:60]...), int64(len(ngFile)), "block of 112 bytes"},
		{"pcapng simple packet block without interface", (&ng{o: binary.LittleEndian}).shb().spb(p, 0).bytes(), int64(shbLen), "before any interface"},
		{"pcapng version 2", func() []byte { c := append([]byte(nil), ngFile...); c[12] = 2; return c }(), 0, "major version 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readAll(t, tt.file)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FormatError", err)
			}
			if fe.File != "test.pcap" || fe.Offset != tt.offset || !strings.Contains(fe.Reason, tt.reason) {
				t.Errorf("got %v\nwant byte %d and a reason with %q", err, tt.offset, tt.reason)
			}
		})
	}
}

func TestReadErrorsAreWrapped(t *testing.T) {
	file := pcapFile(binary.LittleEndian, false, 1, frame{ts: 1, data: make([]byte, 60)})
	boom := errors.New("disk on fire")
	src := io.MultiReader(bytes.NewReader(file), iotest.ErrReader(boom))
	r, err := NewReader(src, "x.pcap")
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, _, _, err = r.NextFrame()
	}
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "x.pcap") {
		t.Errorf("err = %v, want the read error wrapped with the file name", err)
	}
}

func TestOneByteReads(t *testing.T) {
	p := ether(0x0800, ip(rec4(packet.SYN, 0)))
	n := ng{o: binary.BigEndian}
	n.shb().idb(1, 0).block(4, make([]byte, 40)).epb(0, 1, p, 0).epb(0, 2, p, 0)
	for _, file := range [][]byte{n.bytes(), pcapFile(binary.LittleEndian, false, 1, frame{data: p}, frame{data: p})} {
		r, err := NewReader(iotest.OneByteReader(bytes.NewReader(file)), "slow")
		if err != nil {
			t.Fatal(err)
		}
		var rec packet.Record
		count := 0
		for err = r.Next(&rec); err == nil; err = r.Next(&rec) {
			count++
		}
		if err != io.EOF || count != 2 {
			t.Errorf("%d records, err %v", count, err)
		}
	}
}

func TestLargeFileCrossesBufferBoundaries(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewPcapngWriter(&buf, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Frames of varying sizes, some large, so blocks straddle the 1 MiB
	// buffer's end many times.
	base := ether(0x0800, ip(rec4(packet.PSH|packet.ACK, 0)))
	const n = 3000
	for i := 0; i < n; i++ {
		f := append(append([]byte(nil), base...), make([]byte, (i*7919)%3000)...)
		if err := w.WritePacket(int64(i), f, len(f)); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, MaxCaptureLength)
	copy(big, base)
	if err := w.WritePacket(n, big, len(big)); err != nil {
		t.Fatal(err)
	}
	recs, st, err := readAll(t, buf.Bytes())
	if err != io.EOF || len(recs) != n+1 {
		t.Fatalf("%d records, err %v, stats %+v", len(recs), err, st)
	}
	for i, r := range recs {
		if r.Timestamp != int64(i) {
			t.Fatalf("record %d has timestamp %d", i, r.Timestamp)
		}
	}
}

func TestNextDoesNotAllocate(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewPcapWriter(&buf, 1, 0, true)
	p := ether(0x0800, ip(rec4(packet.PSH|packet.ACK, 100, 1, 1, 8)))
	for i := 0; i < 1000; i++ {
		_ = w.WritePacket(int64(i), p, len(p)+100)
	}
	r, err := NewReader(bytes.NewReader(buf.Bytes()), "x")
	if err != nil {
		t.Fatal(err)
	}
	var rec packet.Record
	if n := testing.AllocsPerRun(500, func() {
		if err := r.Next(&rec); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per Next, want 0", n)
	}
}

// libpcap puts a VLAN tag the kernel stripped back after a Linux cooked
// header, as `tcpdump -i any` (LINUX_SLL) writes for a tagged interface:
// the IP packet is found after the tags, as in an Ethernet frame.
func TestVLANTagsAfterCookedHeaders(t *testing.T) {
	r := rec4(packet.SYN, 0, linuxSYN...)
	tag := func(tpids []uint16, ip []byte) []byte { // tags, then the EtherType 0x0800
		var b []byte
		for _, tp := range tpids[1:] {
			b = binary.BigEndian.AppendUint16(b, 100)
			b = binary.BigEndian.AppendUint16(b, tp)
		}
		b = binary.BigEndian.AppendUint16(b, 100)
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		return append(b, ip...)
	}
	for _, tc := range []struct {
		name     string
		linkType uint32
		frame    []byte
	}{
		{"SLL, 802.1Q", LinkTypeLinuxSLL, sll(0x8100, tag([]uint16{0x8100}, ip(r)))},
		{"SLL, QinQ", LinkTypeLinuxSLL, sll(0x88a8, tag([]uint16{0x88a8, 0x8100}, ip(r)))},
		{"SLL2, 802.1Q", LinkTypeSLL2, sll2(0x8100, tag([]uint16{0x8100}, ip(r)))},
	} {
		recs, st, err := readAll(t, pcapFile(binary.LittleEndian, false, tc.linkType, frame{ts: 1e9, data: tc.frame}))
		w := r
		w.Timestamp = 1e9
		if err != io.EOF || len(recs) != 1 || recs[0] != w {
			t.Errorf("%s: %d records (stats %+v, err %v), want the SYN", tc.name, len(recs), st, err)
		}
	}
}

// BSD loopback frames (macOS and the BSDs capture lo0 as LINKTYPE_NULL,
// OpenBSD also as LINKTYPE_LOOP) carry a 4-byte address family before the
// IP packet: in the capturing host's byte order for NULL, in network order
// for LOOP, and with a different IPv6 number on each system.
func TestBSDLoopbackFrames(t *testing.T) {
	v4 := rec4(packet.SYN, 0, linuxSYN...)
	v6 := rec6(packet.SYN, 0, linuxSYN...)
	family := func(o binary.AppendByteOrder, af uint32, ip []byte) []byte {
		return append(o.AppendUint32(nil, af), ip...)
	}
	checkOneFrames(t, []oneFrame{
		{"NULL, little-endian host, IPv4", LinkTypeNull, family(binary.LittleEndian, 2, ip(v4)), &v4, false},
		{"NULL, big-endian host, IPv4", LinkTypeNull, family(binary.BigEndian, 2, ip(v4)), &v4, false},
		{"NULL, macOS IPv6 (30)", LinkTypeNull, family(binary.LittleEndian, 30, ip(v6)), &v6, false},
		{"NULL, FreeBSD IPv6 (28)", LinkTypeNull, family(binary.LittleEndian, 28, ip(v6)), &v6, false},
		{"NULL, NetBSD/OpenBSD IPv6 (24), big-endian host", LinkTypeNull, family(binary.BigEndian, 24, ip(v6)), &v6, false},
		{"NULL, Linux IPv6 (10)", LinkTypeNull, family(binary.LittleEndian, 10, ip(v6)), &v6, false},
		{"LOOP, IPv4", LinkTypeLoop, family(binary.BigEndian, 2, ip(v4)), &v4, false},
		{"LOOP, IPv6 (24)", LinkTypeLoop, family(binary.BigEndian, 24, ip(v6)), &v6, false},
		{"LOOP written little-endian is not IPv4", LinkTypeLoop, family(binary.LittleEndian, 2, ip(v4)), nil, true},
		{"NULL, another family (AppleTalk 16)", LinkTypeNull, family(binary.LittleEndian, 16, ip(v4)), nil, true},
		{"NULL, IPv4 family with an IPv6 packet", LinkTypeNull, family(binary.LittleEndian, 2, ip(v6)), nil, false},
		{"NULL, header cut short", LinkTypeNull, []byte{2, 0, 0}, nil, false},
	})
}

// Ethernet frames of access and core links: a PPPoE session (DSL
// subscribers) carries IP after a 6-byte header and the PPP protocol, and
// MPLS carries it under a stack of labels that ends with the
// bottom-of-stack bit, also behind VLAN tags and in cooked captures.
func TestPPPoEAndMPLSFrames(t *testing.T) {
	v4 := rec4(packet.SYN, 0, linuxSYN...)
	v6 := rec6(packet.SYN, 0, linuxSYN...)
	pppoe := func(proto uint16, ip []byte) []byte {
		b := []byte{0x11, 0, 0x12, 0x34}
		b = binary.BigEndian.AppendUint16(b, uint16(2+len(ip)))
		b = binary.BigEndian.AppendUint16(b, proto)
		return append(b, ip...)
	}
	checkOneFrames(t, []oneFrame{
		{"PPPoE, IPv4", LinkTypeEthernet, ether(0x8864, pppoe(0x0021, ip(v4))), &v4, false},
		{"PPPoE, IPv6, behind a VLAN tag", LinkTypeEthernet, ether(0x8864, pppoe(0x0057, ip(v6)), 0x8100), &v6, false},
		{"PPPoE, LCP", LinkTypeEthernet, ether(0x8864, pppoe(0xc021, []byte{9, 1, 0, 8, 0, 0, 0, 0})), nil, true},
		{"PPPoE, IPv4 protocol with an IPv6 packet", LinkTypeEthernet, ether(0x8864, pppoe(0x0021, ip(v6))), nil, false},
		{"PPPoE, header cut short", LinkTypeEthernet, ether(0x8864, []byte{0x11, 0, 0x12, 0x34, 0}), nil, false},
		{"PPPoE discovery (PADI)", LinkTypeEthernet, ether(0x8863, []byte{0x11, 0x09, 0, 0, 0, 0}), nil, true},
		{"MPLS, one label, IPv4", LinkTypeEthernet, ether(0x8847, mplsLabels(1, ip(v4))), &v4, false},
		{"MPLS, three labels, IPv6", LinkTypeEthernet, ether(0x8847, mplsLabels(3, ip(v6))), &v6, false},
		{"MPLS multicast, Linux SLL", LinkTypeLinuxSLL, sll(0x8848, mplsLabels(2, ip(v4))), &v4, false},
		{"MPLS, a pseudowire's control word", LinkTypeEthernet, ether(0x8847, mplsLabels(1, []byte{0, 0, 0, 0, 2, 0, 0, 0, 0, 1})), nil, true},
		{"MPLS, no bottom of stack", LinkTypeEthernet, ether(0x8847, binary.BigEndian.AppendUint32(nil, 17<<12|64)), nil, false},
		{"MPLS, nothing after the stack", LinkTypeEthernet, ether(0x8847, mplsLabels(2, nil)), nil, false},
	})
}

// Serial links: PPP with or without RFC 1662's address and control bytes
// and with a one- or two-byte protocol, carrying IP or MPLS, and Cisco
// HDLC, on its own link type or in PPP_HDLC captures.
func TestPPPAndCiscoHDLCFrames(t *testing.T) {
	v4 := rec4(packet.SYN, 0, linuxSYN...)
	v6 := rec6(packet.SYN, 0, linuxSYN...)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	checkOneFrames(t, []oneFrame{
		{"PPP, address and control, IPv4", LinkTypePPP, cat([]byte{0xff, 0x03, 0x00, 0x21}, ip(v4)), &v4, false},
		{"PPP, no address and control, IPv6", LinkTypePPP, cat([]byte{0x00, 0x57}, ip(v6)), &v6, false},
		{"PPP, compressed protocol, IPv4", LinkTypePPP, cat([]byte{0x21}, ip(v4)), &v4, false},
		{"PPP, MPLS", LinkTypePPP, cat([]byte{0xff, 0x03, 0x02, 0x81}, mplsLabels(1, ip(v4))), &v4, false},
		{"PPP, LCP", LinkTypePPP, []byte{0xff, 0x03, 0xc0, 0x21, 9, 1, 0, 4}, nil, true},
		{"PPP, protocol cut short", LinkTypePPP, []byte{0xff, 0x03, 0x00}, nil, false},
		{"PPP, IPv6 protocol with an IPv4 packet", LinkTypePPP, cat([]byte{0x00, 0x57}, ip(v4)), nil, false},
		{"PPP_HDLC, PPP", LinkTypePPPHDLC, cat([]byte{0xff, 0x03, 0x00, 0x21}, ip(v4)), &v4, false},
		{"PPP_HDLC, Cisco HDLC", LinkTypePPPHDLC, cat([]byte{0x0f, 0x00, 0x86, 0xdd}, ip(v6)), &v6, false},
		{"Cisco HDLC, IPv4", LinkTypeCHDLC, cat([]byte{0x0f, 0x00, 0x08, 0x00}, ip(v4)), &v4, false},
		{"Cisco HDLC multicast, MPLS", LinkTypeCHDLC, cat([]byte{0x8f, 0x00, 0x88, 0x47}, mplsLabels(1, ip(v6))), &v6, false},
		{"Cisco HDLC, SLARP keepalive", LinkTypeCHDLC, cat([]byte{0x8f, 0x00, 0x80, 0x35}, make([]byte, 18)), nil, true},
		{"Cisco HDLC, a bad address byte", LinkTypeCHDLC, cat([]byte{0xff, 0x03, 0x08, 0x00}, ip(v4)), nil, false},
	})
}

// oneFrame is a capture of one frame at 1 s and what reading it gives.
type oneFrame struct {
	name     string
	linkType uint32
	frame    []byte
	want     *packet.Record // nil: skipped
	notTCP   bool           // skipped as not IP rather than as undecodable
}

// checkOneFrames reads each case as a little-endian pcap file and checks
// that its frame gives the wanted record, or is skipped and counted as
// the case says.
func checkOneFrames(t *testing.T, cases []oneFrame) {
	t.Helper()
	for _, tc := range cases {
		recs, st, err := readAll(t, pcapFile(binary.LittleEndian, false, tc.linkType, frame{ts: 1e9, data: tc.frame}))
		if err != io.EOF {
			t.Errorf("%s: error %v, want a clean end of file", tc.name, err)
			continue
		}
		if tc.want == nil {
			if len(recs) != 0 {
				t.Errorf("%s: %d records, want the frame skipped", tc.name, len(recs))
			}
			if tc.notTCP && st.SkippedNonTCP != 1 || !tc.notTCP && st.SkippedUndecodable != 1 {
				t.Errorf("%s: stats %+v, want the frame counted as %s", tc.name, st, map[bool]string{true: "not TCP", false: "undecodable"}[tc.notTCP])
			}
			continue
		}
		w := *tc.want
		w.Timestamp = 1e9
		if len(recs) != 1 || recs[0] != w {
			t.Errorf("%s: %d records (stats %+v), want the SYN", tc.name, len(recs), st)
		}
	}
}
