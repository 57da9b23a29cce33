package packet

import (
	"encoding/binary"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Hand-built packets: the tests below do not use any encoder of this
// repository, so an encoder bug cannot hide a decoder bug.

// tcpSeg is a TCP header with the given options (padded by the caller to
// a multiple of 4), source port 40000, destination port 443.
func tcpSeg(flags Flags, opts ...byte) []byte {
	t := make([]byte, 20+len(opts))
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 443)
	binary.BigEndian.PutUint32(t[4:], 1000)
	binary.BigEndian.PutUint32(t[8:], 2000)
	t[12] = byte(len(t)/4) << 4
	t[13] = byte(flags)
	binary.BigEndian.PutUint16(t[14:], 64240)
	copy(t[20:], opts)
	return t
}

// v4 is an IPv4 packet: header with ipOpts, then l4, claiming payload
// bytes after l4 that are not there.
type v4 struct {
	ipOpts  []byte
	proto   byte
	frag    uint16 // flags and fragment offset field
	l4      []byte
	payload int
	total   int // if non-zero, overrides the total length
}

func (p v4) bytes() []byte {
	ihl := 20 + len(p.ipOpts)
	b := make([]byte, ihl, ihl+len(p.l4))
	b[0] = 0x40 | byte(ihl/4)
	total := ihl + len(p.l4) + p.payload
	if p.total != 0 {
		total = p.total
	}
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	binary.BigEndian.PutUint16(b[4:], 54321)
	binary.BigEndian.PutUint16(b[6:], p.frag)
	b[8] = 57
	b[9] = p.proto
	copy(b[12:], []byte{192, 0, 2, 1, 198, 51, 100, 7})
	copy(b[20:], p.ipOpts)
	return append(b, p.l4...)
}

// ext is an IPv6 extension header: its type and its bytes (next header
// byte filled in by v6.bytes).
type ext struct {
	typ  byte
	body []byte
}

func extHdr(typ byte, n8 int) ext { // generic: (hdr ext len + 1) * 8 bytes
	b := make([]byte, n8*8)
	b[1] = byte(n8 - 1)
	return ext{typ, b}
}

func fragHdr(offset uint16, more bool) ext {
	b := make([]byte, 8)
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	return ext{44, b}
}

func ahHdr(n4 int) ext { // (payload len + 2) * 4 bytes
	b := make([]byte, n4*4)
	b[1] = byte(n4 - 2)
	return ext{51, b}
}

type v6 struct {
	exts    []ext
	proto   byte
	l4      []byte
	payload int
	plen    int // if >= 0 and set via setPlen, overrides the payload length
	setPlen bool
}

func (p v6) bytes() []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	extLen := 0
	for _, e := range p.exts {
		extLen += len(e.body)
	}
	plen := extLen + len(p.l4) + p.payload
	if p.setPlen {
		plen = p.plen
	}
	binary.BigEndian.PutUint16(b[4:], uint16(plen))
	b[7] = 63
	a := netip.MustParseAddr("2001:db8::1").As16()
	copy(b[8:], a[:])
	a = netip.MustParseAddr("2001:db8::2").As16()
	copy(b[24:], a[:])
	next := &b[6]
	for _, e := range p.exts {
		*next = e.typ
		start := len(b)
		b = append(b, e.body...)
		next = &b[start]
	}
	*next = p.proto
	return append(b, p.l4...)
}

// Linux SYN options: MSS 1460, SACK permitted, timestamps, NOP, WS 7.
var synOpts = []byte{2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7}

func TestDecodeIPv4(t *testing.T) {
	tests := []struct {
		name    string
		pkt     []byte
		payload uint16
		df      bool
		opts    []uint8
	}{
		{"syn with Linux options", v4{proto: 6, frag: 0x4000, l4: tcpSeg(SYN, synOpts...)}.bytes(), 0, true, []uint8{2, 4, 8, 1, 3}},
		{"ip options are skipped", v4{ipOpts: []byte{1, 1, 1, 0}, proto: 6, l4: tcpSeg(SYN)}.bytes(), 0, false, []uint8{}},
		{"largest IHL (40 option bytes)", v4{ipOpts: make([]byte, 40), proto: 6, l4: tcpSeg(ACK)}.bytes(), 0, false, []uint8{}},
		{"headers-only capture keeps the wire payload length", v4{proto: 6, l4: tcpSeg(PSH|ACK, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2), payload: 1448}.bytes(), 1448, false, []uint8{1, 1, 8}},
		{"first fragment is decoded", v4{proto: 6, frag: 0x2000, l4: tcpSeg(PSH | ACK), payload: 500}.bytes(), 500, false, []uint8{}},
		{"total length 0 (TSO) falls back to the captured length", append(v4{proto: 6, l4: tcpSeg(ACK), total: 0}.bytesZeroTotal(), make([]byte, 10)...), 10, false, []uint8{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec Record
			if err := Decode(tt.pkt, 42, &rec); err != nil {
				t.Fatal(err)
			}
			want := Record{Timestamp: 42, SrcPort: 40000, DstPort: 443, IPVersion: 4, Seq: 1000, Ack: 2000,
				Window: 64240, TTL: 57, IPID: 54321, DF: tt.df, PayloadLen: tt.payload, Flags: rec.Flags}
			want.SetSrc(netip.MustParseAddr("192.0.2.1"))
			want.SetDst(netip.MustParseAddr("198.51.100.7"))
			copy(want.Options[:], tt.opts)
			want.NumOptions = uint8(len(tt.opts))
			if rec != want {
				t.Errorf("got  %+v\nwant %+v", rec, want)
			}
		})
	}
}

// bytesZeroTotal is bytes with the total length field set to 0.
func (p v4) bytesZeroTotal() []byte {
	b := p.bytes()
	b[2], b[3] = 0, 0
	return b
}

func TestDecodeIPv4TrailingPaddingIsNotPayload(t *testing.T) {
	pkt := append(v4{proto: 6, l4: tcpSeg(ACK)}.bytes(), 0, 0, 0, 0, 0, 0) // Ethernet minimum-frame padding
	var rec Record
	if err := Decode(pkt, 0, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.PayloadLen != 0 {
		t.Errorf("PayloadLen = %d, want 0", rec.PayloadLen)
	}
}

func TestDecodeFlagsAndNumbers(t *testing.T) {
	for _, f := range []Flags{SYN, SYN | ACK, ACK, PSH | ACK, RST, RST | ACK, FIN | ACK, FIN | PSH | URG | ECE | CWR} {
		var rec Record
		if err := Decode(v4{proto: 6, l4: tcpSeg(f)}.bytes(), 0, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Flags != f {
			t.Errorf("flags %s decoded as %s", f, rec.Flags)
		}
	}
}

func TestDecodeIPv6ExtensionHeaders(t *testing.T) {
	tests := []struct {
		name string
		exts []ext
	}{
		{"no extension headers", nil},
		{"hop-by-hop", []ext{extHdr(0, 1)}},
		{"routing", []ext{extHdr(43, 3)}},
		{"first fragment", []ext{fragHdr(0, true)}},
		{"destination options", []ext{extHdr(60, 2)}},
		{"authentication header (4-byte units)", []ext{ahHdr(6)}},
		{"mobility", []ext{extHdr(135, 1)}},
		{"HIP", []ext{extHdr(139, 2)}},
		{"Shim6", []ext{extHdr(140, 1)}},
		{"chain of all kinds", []ext{extHdr(0, 1), extHdr(60, 1), extHdr(43, 3), fragHdr(0, true), ahHdr(5), extHdr(135, 1), extHdr(139, 1), extHdr(140, 1), extHdr(60, 2)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := v6{exts: tt.exts, proto: 6, l4: tcpSeg(PSH|ACK, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2), payload: 517}.bytes()
			var rec Record
			if err := Decode(pkt, 7, &rec); err != nil {
				t.Fatal(err)
			}
			want := Record{Timestamp: 7, SrcPort: 40000, DstPort: 443, Flags: PSH | ACK, Seq: 1000, Ack: 2000,
				Window: 64240, TTL: 63, PayloadLen: 517, Options: [MaxOptions]uint8{1, 1, 8}, NumOptions: 3}
			want.SetSrc(netip.MustParseAddr("2001:db8::1"))
			want.SetDst(netip.MustParseAddr("2001:db8::2"))
			if rec != want {
				t.Errorf("got  %+v\nwant %+v", rec, want)
			}
		})
	}
}

func TestDecodeIPv6Jumbogram(t *testing.T) {
	hbh := ext{0, []byte{0, 0, 0xc2, 4, 0, 2, 0, 0}} // Jumbo Payload option: 131072
	pkt := v6{exts: []ext{hbh}, proto: 6, l4: tcpSeg(ACK), setPlen: true, plen: 0}.bytes()
	var rec Record
	if err := Decode(pkt, 0, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.PayloadLen != 0xffff {
		t.Errorf("PayloadLen = %d, want 65535 (131072-28 clamped)", rec.PayloadLen)
	}
}

func TestDecodeNotTCP(t *testing.T) {
	udp := make([]byte, 8)
	tests := []struct {
		name     string
		pkt      []byte
		fragment bool
	}{
		{"IPv4 UDP", v4{proto: 17, l4: udp}.bytes(), false},
		{"IPv4 ICMP", v4{proto: 1, l4: make([]byte, 8)}.bytes(), false},
		{"IPv4 non-first TCP fragment", v4{proto: 6, frag: 185, l4: make([]byte, 8)}.bytes(), true},
		{"IPv4 non-first UDP fragment", v4{proto: 17, frag: 185, l4: make([]byte, 8)}.bytes(), false},
		{"IPv6 UDP", v6{proto: 17, l4: udp}.bytes(), false},
		{"IPv6 ICMPv6 after hop-by-hop", v6{exts: []ext{extHdr(0, 1)}, proto: 58, l4: udp}.bytes(), false},
		{"IPv6 ESP", v6{proto: 50, l4: make([]byte, 16)}.bytes(), false},
		{"IPv6 ESP after destination options", v6{exts: []ext{extHdr(60, 1)}, proto: 50, l4: make([]byte, 16)}.bytes(), false},
		{"IPv6 no next header", v6{proto: 59}.bytes(), false},
		{"IPv6 non-first fragment", v6{exts: []ext{fragHdr(100, false)}, proto: 6, l4: make([]byte, 20)}.bytes(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec Record
			err := Decode(tt.pkt, 0, &rec)
			if !errors.Is(err, ErrNotTCP) {
				t.Fatalf("err = %v, want ErrNotTCP", err)
			}
			if errors.Is(err, ErrFragment) != tt.fragment {
				t.Errorf("errors.Is(err, ErrFragment) = %v, want %v", !tt.fragment, tt.fragment)
			}
		})
	}
}

func TestDecodeBadHeaders(t *testing.T) {
	good4 := v4{proto: 6, l4: tcpSeg(SYN, synOpts...)}.bytes()
	good6 := v6{exts: []ext{extHdr(0, 1), extHdr(60, 2)}, proto: 6, l4: tcpSeg(SYN, synOpts...)}.bytes()
	set := func(b []byte, i int, v byte) []byte {
		c := append([]byte(nil), b...)
		c[i] = v
		return c
	}
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"IP version 5", set(good4, 0, 0x55), ErrMalformed},
		{"IPv4 shorter than 20 bytes", good4[:19], ErrTruncated},
		{"IPv4 IHL 4", set(good4, 0, 0x44), ErrMalformed},
		{"IPv4 options cut by the capture", set(good4[:30], 0, 0x48), ErrTruncated},
		{"IPv4 total length below the headers", v4{proto: 6, l4: tcpSeg(SYN), total: 30}.bytes(), ErrMalformed},
		{"TCP header cut at 19 bytes", good4[:20+19], ErrTruncated},
		{"TCP data offset 4", set(good4, 20+12, 0x40), ErrMalformed},
		{"IPv6 shorter than 40 bytes", good6[:39], ErrTruncated},
		{"IPv6 extension header cut", good6[:40+12], ErrTruncated},
		{"IPv6 extension length field cut", good6[:41], ErrTruncated},
		{"IPv6 payload length below the headers", v6{proto: 6, l4: tcpSeg(SYN), setPlen: true, plen: 10}.bytes(), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec Record
			err := Decode(tt.pkt, 0, &rec)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if errors.Is(err, ErrNotTCP) {
				t.Errorf("a broken header must not read as ErrNotTCP")
			}
		})
	}
}

func TestDecodeTCPOptionWalk(t *testing.T) {
	many := make([]byte, 40)
	for i := range many {
		many[i] = 1
	}
	tests := []struct {
		name string
		opts []byte
		kept []uint8
		num  int
	}{
		{"EOL ends the walk", []byte{2, 4, 5, 0xb4, 0, 3, 3, 7}, []uint8{2, 0}, 2},
		{"unknown kinds use their length", []byte{30, 6, 0, 0, 0, 0, 254, 4, 0, 0, 1, 0}, []uint8{30, 254, 1, 0}, 4},
		{"length 0 is recorded and stops the walk", []byte{1, 5, 0, 1}, []uint8{1, 5}, 2},
		{"length 1 is recorded and stops the walk", []byte{5, 1, 1, 1}, []uint8{5}, 1},
		{"length past the header stops the walk", []byte{1, 1, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0}, []uint8{1, 1, 8}, 3},
		{"kind without a length byte at the end", []byte{1, 1, 1, 2}, []uint8{1, 1, 1, 2}, 4},
		{"40 NOPs: 12 kept, 40 counted", many, []uint8{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 40},
	}
	// A capture cut inside the options: the fixed header is decoded, the
	// kinds seen kept, and one more counted for the unseen rest (its slot
	// holds 0).
	for _, tc := range []struct {
		name string
		keep int // option bytes captured
		kept []uint8
	}{
		{"cut after the MSS", 4, []uint8{2, 0}},
		{"cut inside the timestamps", 10, []uint8{2, 4, 8, 0}},
		{"cut before any option", 0, []uint8{0}},
	} {
		pkt := v4{proto: 6, l4: tcpSeg(SYN, synOpts...)}.bytes()
		var rec Record
		if err := Decode(pkt[:20+20+tc.keep], 0, &rec); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := rec.OptionKinds(); string(got) != string(tc.kept) || int(rec.NumOptions) != len(tc.kept) ||
			rec.Flags != SYN || rec.SrcPort != 40000 || rec.Seq != 1000 || rec.Window != 64240 {
			t.Errorf("%s: %+v, want kinds %v", tc.name, rec, tc.kept)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec Record
			if err := Decode(v4{proto: 6, l4: tcpSeg(SYN, tt.opts...)}.bytes(), 0, &rec); err != nil {
				t.Fatal(err)
			}
			if got := rec.OptionKinds(); string(got) != string(tt.kept) || int(rec.NumOptions) != tt.num {
				t.Errorf("kinds %v (%d), want %v (%d)", got, rec.NumOptions, tt.kept, tt.num)
			}
		})
	}
}

func TestDecodeOverwritesRecord(t *testing.T) {
	rec := Record{NumOptions: 9, Options: [MaxOptions]uint8{1, 2, 3}, DF: true, IPID: 9}
	if err := Decode(v6{proto: 6, l4: tcpSeg(SYN)}.bytes(), 0, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.NumOptions != 0 || rec.Options[0] != 0 || rec.DF || rec.IPID != 0 {
		t.Errorf("fields of the previous packet survived: %+v", rec)
	}
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	pkts := [][]byte{
		v4{proto: 6, l4: tcpSeg(SYN, synOpts...)}.bytes(),
		v6{exts: []ext{extHdr(0, 1), fragHdr(0, true)}, proto: 6, l4: tcpSeg(SYN, synOpts...)}.bytes(),
		v4{proto: 17, l4: make([]byte, 8)}.bytes(),
		v4{proto: 6, l4: tcpSeg(SYN, synOpts...)}.bytes()[:30],
	}
	var rec Record
	for _, p := range pkts {
		if n := testing.AllocsPerRun(100, func() { _ = Decode(p, 1, &rec) }); n != 0 {
			t.Errorf("%d allocations per call, want 0", int(n))
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	pkt := v4{proto: 6, l4: tcpSeg(PSH|ACK, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2), payload: 100}.bytes()
	var rec Record
	b.ReportAllocs()
	for b.Loop() {
		if err := Decode(pkt, 1, &rec); err != nil {
			b.Fatal(err)
		}
	}
}

// fuzzDecodeSeeds are packets of every kind Decode knows.
func fuzzDecodeSeeds() map[string][]byte {
	return map[string][]byte{
		"ipv4-syn":         v4{proto: 6, frag: 0x4000, l4: tcpSeg(SYN, synOpts...)}.bytes(),
		"ipv4-options-rst": v4{ipOpts: []byte{1, 1, 1, 0}, proto: 6, l4: tcpSeg(RST)}.bytes(),
		"ipv4-udp":         v4{proto: 17, l4: make([]byte, 8)}.bytes(),
		"ipv4-fragment":    v4{proto: 6, frag: 185, l4: make([]byte, 8)}.bytes(),
		"ipv6-chain":       v6{exts: []ext{extHdr(0, 1), extHdr(43, 3), fragHdr(0, true), ahHdr(5)}, proto: 6, l4: tcpSeg(PSH|ACK, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2), payload: 9}.bytes(),
		"ipv6-jumbo":       v6{exts: []ext{{0, []byte{0, 0, 0xc2, 4, 0, 2, 0, 0}}}, proto: 6, l4: tcpSeg(ACK), setPlen: true}.bytes(),
		"ipv6-esp":         v6{exts: []ext{extHdr(60, 1)}, proto: 50, l4: make([]byte, 16)}.bytes(),
		"ipv6-bad-options": v6{proto: 6, l4: tcpSeg(SYN, 1, 1, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0)}.bytes(),
	}
}

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzDecode from fuzzDecodeSeeds")

// TestFuzzDecodeSeeds checks the committed seed corpus against
// fuzzDecodeSeeds, and rewrites it with -update-seeds.
func TestFuzzDecodeSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for name, data := range fuzzDecodeSeeds() {
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
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s is missing or differs from its builder (run go test -run TestFuzzDecodeSeeds -update-seeds): %v", path, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	// The seeds are in testdata/fuzz/FuzzDecode (see -update-seeds).
	f.Fuzz(func(t *testing.T, b []byte) {
		var rec Record
		err := Decode(b, 1, &rec)
		if err != nil {
			if !errors.Is(err, ErrNotTCP) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error of no known class: %v", err)
			}
			return
		}
		if rec.IPVersion != 4 && rec.IPVersion != 6 {
			t.Fatalf("IPVersion %d", rec.IPVersion)
		}
		if rec.NumOptions > 40 {
			t.Fatalf("NumOptions %d: more than fit in 40 bytes", rec.NumOptions)
		}
		if rec.Timestamp != 1 {
			t.Fatalf("Timestamp %d", rec.Timestamp)
		}
	})
}
