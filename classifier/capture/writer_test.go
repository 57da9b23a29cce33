package capture

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/connscope/connscope/packet"
)

// packetWriter is what PcapWriter and PcapngWriter have in common.
type packetWriter interface {
	WritePacket(ts int64, data []byte, origLen int) error
}

// roundTripRecords are records as real stacks and middleboxes send them.
func roundTripRecords() []packet.Record {
	recs := []packet.Record{
		rec4(packet.SYN, 0, linuxSYN...),
		rec4(packet.ACK, 0, 1, 1, 8),
		rec4(packet.PSH|packet.ACK, 517, 1, 1, 8),
		rec4(packet.RST, 0),
		rec4(packet.RST|packet.ACK, 0),
		rec4(packet.FIN|packet.ACK, 0, 1, 1, 8),
		rec4(packet.SYN, 0, 2), // nmap: MSS only
		rec4(packet.PSH|packet.ACK, 65535-80),
		rec6(packet.SYN, 0, 2, 1, 3, 1, 1, 8, 4, 0),          // macOS: ends in EOL
		rec6(packet.PSH|packet.ACK, 1208, 1, 1, 5, 1, 1, 30), // SACK, an unknown kind
		rec6(packet.RST, 0),
		rec6(packet.ACK, 0, 0), // a lone EOL
	}
	nops := rec4(packet.ACK, 0)
	nops.NumOptions = 16 // 12 kept, 4 more counted
	for i := range nops.Options {
		nops.Options[i] = 1
	}
	recs = append(recs, nops)
	syn := rec4(packet.SYN, 0)
	syn.DF = false
	syn.IPID = 54321
	syn.Window = 65535
	syn.TTL = 255
	recs = append(recs, syn)
	for i := range recs {
		recs[i].Timestamp = 1700000000000000000 + int64(i)*1234567000 // µs-exact
	}
	return recs
}

func TestRoundTrip(t *testing.T) {
	wrappers := []struct {
		name     string
		linkType uint32
		wrap     func(ip []byte) []byte
	}{
		{"raw", LinkTypeRaw, func(ip []byte) []byte { return ip }},
		{"Ethernet", LinkTypeEthernet, func(ip []byte) []byte {
			et := uint16(etherIPv4)
			if ip[0]>>4 == 6 {
				et = etherIPv6
			}
			return ether(et, ip)
		}},
	}
	writers := []struct {
		name string
		new  func(w io.Writer, linkType uint32) (packetWriter, error)
	}{
		{"pcap µs", func(w io.Writer, lt uint32) (packetWriter, error) {
			return NewPcapWriter(w, lt, 128, false)
		}},
		{"pcap ns", func(w io.Writer, lt uint32) (packetWriter, error) {
			return NewPcapWriter(w, lt, 0, true)
		}},
		{"pcapng", func(w io.Writer, lt uint32) (packetWriter, error) {
			return NewPcapngWriter(w, lt, 128)
		}},
	}
	recs := roundTripRecords()
	for _, wr := range writers {
		for _, lw := range wrappers {
			t.Run(wr.name+" "+lw.name, func(t *testing.T) {
				var buf bytes.Buffer
				w, err := wr.new(&buf, lw.linkType)
				if err != nil {
					t.Fatal(err)
				}
				for i := range recs {
					f := lw.wrap(BuildPacket(&recs[i]))
					if err := w.WritePacket(recs[i].Timestamp, f, len(f)+int(recs[i].PayloadLen)); err != nil {
						t.Fatal(err)
					}
				}
				got, st, err := readAll(t, buf.Bytes())
				if err != io.EOF {
					t.Fatal(err)
				}
				if len(got) != len(recs) {
					t.Fatalf("%d records, want %d (stats %+v)", len(got), len(recs), st)
				}
				for i := range recs {
					if got[i] != recs[i] {
						t.Errorf("record %d:\ngot  %+v\nwant %+v", i, got[i], recs[i])
					}
				}
			})
		}
	}
}

func TestBuildPacketPadsUnalignedOptionsWithEOL(t *testing.T) {
	r := rec4(packet.SYN, 0, 2, 3) // 4 + 3 bytes: one byte of padding
	var got packet.Record
	if err := packet.Decode(BuildPacket(&r), 0, &got); err != nil {
		t.Fatal(err)
	}
	if kinds := got.OptionKinds(); string(kinds) != string([]uint8{2, 3, 0}) {
		t.Errorf("kinds %v, want [2 3 0]", kinds)
	}
}

func TestBuildPacketHeaders(t *testing.T) {
	r := rec4(packet.SYN, 1000, linuxSYN...)
	b := BuildPacket(&r)
	if len(b) != 20+40 {
		t.Fatalf("%d bytes, want 60 (no payload bytes)", len(b))
	}
	if total := int(b[2])<<8 | int(b[3]); total != 1060 {
		t.Errorf("IPv4 total length %d, want 1060", total)
	}
	if ipv4Checksum(b[:20]) != 0 {
		t.Errorf("IPv4 header checksum does not verify")
	}
	r6 := rec6(packet.ACK, 10)
	if b := BuildPacket(&r6); len(b) != 60 || int(b[4])<<8|int(b[5]) != 30 {
		t.Errorf("IPv6: %d bytes, payload length %d; want 60, 30", len(b), int(b[4])<<8|int(b[5]))
	}
}

func TestWritersRejectBadInput(t *testing.T) {
	pw, _ := NewPcapWriter(io.Discard, 1, 0, false)
	nw, _ := NewPcapngWriter(io.Discard, 1, 0)
	for name, w := range map[string]packetWriter{"pcap": pw, "pcapng": nw} {
		if err := w.WritePacket(-1, []byte{1}, 1); err == nil {
			t.Errorf("%s: negative timestamp accepted", name)
		}
		if err := w.WritePacket(1, []byte{1, 2}, 1); !errors.Is(err, errOrigLen) {
			t.Errorf("%s: original length below captured: err %v", name, err)
		}
	}
	if err := pw.WritePacket(1<<62, []byte{1}, 1); err == nil {
		t.Errorf("pcap: timestamp past 2106 accepted")
	}
	if _, err := NewPcapngWriter(io.Discard, 70000, 0); err == nil {
		t.Errorf("pcapng: link type above 65535 accepted")
	}
}

func TestWritersCutToSnaplen(t *testing.T) {
	for _, ngFormat := range []bool{false, true} {
		var buf bytes.Buffer
		var w packetWriter
		if ngFormat {
			w, _ = NewPcapngWriter(&buf, 101, 50)
		} else {
			w, _ = NewPcapWriter(&buf, 101, 50, false)
		}
		if err := w.WritePacket(0, make([]byte, 80), 80); err != nil {
			t.Fatal(err)
		}
		r, err := NewReader(&buf, "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, data, err := r.NextFrame(); err != nil || len(data) != 50 {
			t.Errorf("pcapng=%v: %d bytes, err %v; want 50", ngFormat, len(data), err)
		}
	}
}

// TestBuiltIPv4HeadersCarryAValidChecksum: AppendPacket sums the checksum
// from the record's fields; it must verify over the bytes it wrote, for
// every combination of the fields it covers.
func TestBuiltIPv4HeadersCarryAValidChecksum(t *testing.T) {
	for _, src := range []string{"0.0.0.0", "192.0.2.1", "255.255.255.255", "10.255.0.1"} {
		for _, dst := range []string{"0.0.0.0", "198.51.100.7", "255.255.255.254"} {
			for _, df := range []bool{false, true} {
				for _, v := range []uint16{0, 1, 0x7fff, 0xffff} {
					r := rec4(packet.ACK, v, linuxSYN...)
					r.SetSrc(netip.MustParseAddr(src))
					r.SetDst(netip.MustParseAddr(dst))
					r.DF, r.IPID, r.TTL = df, v, uint8(v)
					b := BuildPacket(&r)
					if ipv4Checksum(b[:20]) != 0 {
						t.Fatalf("%s -> %s DF %v IPID/payload %d: the header's checksum %#04x does not verify", src, dst, df, v, uint16(b[10])<<8|uint16(b[11]))
					}
				}
			}
		}
	}
}

// TestAppendRecordBlockIsWhatThePcapngWriterWrites: the agent's file sink
// builds blocks in place; the bytes must be those of a PcapngWriter given
// the built packet and its original length.
func TestAppendRecordBlockIsWhatThePcapngWriterWrites(t *testing.T) {
	recs := []packet.Record{rec4(packet.SYN, 0, linuxSYN...), rec4(packet.PSH|packet.ACK, 1400, 1, 1, 8), rec6(packet.RST, 0), rec4(packet.ACK, 0, 1, 1, 1)}
	for i := range recs {
		recs[i].Timestamp = 1_700_000_000_123_456_789 + int64(i)<<33
	}
	var want bytes.Buffer
	w, err := NewPcapngWriter(&want, LinkTypeRaw, 0)
	if err != nil {
		t.Fatal(err)
	}
	head := want.Len()
	var got []byte
	for i := range recs {
		data := BuildPacket(&recs[i])
		if err := w.WritePacket(recs[i].Timestamp, data, len(data)+int(recs[i].PayloadLen)); err != nil {
			t.Fatal(err)
		}
		if got, err = AppendRecordBlock(got, &recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want.Bytes()[head:]) {
		t.Fatalf("AppendRecordBlock wrote\n%x\nthe writer\n%x", got, want.Bytes()[head:])
	}
	r := recs[0]
	r.Timestamp = -1
	if out, err := AppendRecordBlock(got, &r); err == nil || !strings.Contains(err.Error(), "before 1970") || len(out) != len(got) {
		t.Fatalf("a timestamp before 1970: %v, %d bytes (want an error naming it and nothing appended)", err, len(out)-len(got))
	}
}
