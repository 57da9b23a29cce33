package ingestpb

import (
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

// realRecords reads the records of the real captures kept by
// classifier/capture (tcpdump and NFLOG, IPv4 and IPv6).
func realRecords(tb testing.TB) []packet.Record {
	tb.Helper()
	files, err := filepath.Glob("../../classifier/capture/testdata/real/*")
	if err != nil || len(files) == 0 {
		tb.Fatalf("no real captures found: %v", err)
	}
	var recs []packet.Record
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			tb.Fatal(err)
		}
		r, err := capture.NewReader(f, name)
		if err != nil {
			tb.Fatal(err)
		}
		for {
			var rec packet.Record
			err := r.Next(&rec)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				tb.Fatalf("%s: %v", name, err)
			}
			recs = append(recs, rec)
		}
		f.Close()
	}
	return recs
}

// randomRecords makes records with every field set at random, as Decode
// would fill them: IPv4-mapped addresses for IPv4, no IP ID or DF for
// IPv6, option kinds beyond NumOptions zero.
func randomRecords(n int, seed uint64) []packet.Record {
	rng := rand.New(rand.NewPCG(seed, 1))
	recs := make([]packet.Record, n)
	for i := range recs {
		r := &recs[i]
		r.Timestamp = rng.Int64()
		if rng.IntN(2) == 0 {
			r.SetSrc(netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}))
			r.SetDst(netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.Uint32())}))
			r.IPID = uint16(rng.Uint32())
			r.DF = rng.IntN(2) == 0
		} else {
			var a, b [16]byte
			for j := range a {
				a[j], b[j] = byte(rng.Uint32()), byte(rng.Uint32())
			}
			a[0], b[0] = 0x20, 0xfd // never IPv4-mapped
			r.SetSrc(netip.AddrFrom16(a))
			r.SetDst(netip.AddrFrom16(b))
		}
		r.SrcPort, r.DstPort = uint16(rng.Uint32()), uint16(rng.Uint32())
		r.Flags = packet.Flags(rng.Uint32())
		r.Seq, r.Ack = rng.Uint32(), rng.Uint32()
		r.Window, r.TTL = uint16(rng.Uint32()), uint8(rng.Uint32())
		r.PayloadLen = uint16(rng.Uint32())
		r.NumOptions = uint8(rng.IntN(20))
		for j := range r.OptionKinds() {
			r.Options[j] = uint8(rng.IntN(35))
		}
	}
	return recs
}

func TestRoundTripThroughTheWireGivesTheSameRecords(t *testing.T) {
	for _, tc := range []struct {
		name string
		recs []packet.Record
	}{
		{"real captures", realRecords(t)},
		{"random fields", randomRecords(2000, 7)},
		{"zero IPv4 record", []packet.Record{{IPVersion: 4, SrcIP: netip.IPv4Unspecified().As16(), DstIP: netip.IPv4Unspecified().As16()}}},
		{"zero IPv6 record", []packet.Record{{IPVersion: 6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			batch := &PacketBatch{Node: "n1", Policy: "p", AgentInstance: "i", Sequence: 3,
				Packets: AppendPackets(nil, tc.recs)}
			wire, err := proto.Marshal(batch)
			if err != nil {
				t.Fatal(err)
			}
			var got PacketBatch
			if err := proto.Unmarshal(wire, &got); err != nil {
				t.Fatal(err)
			}
			recs, err := AppendRecords(nil, got.Packets)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != len(tc.recs) {
				t.Fatalf("got %d records, want %d", len(recs), len(tc.recs))
			}
			for i := range recs {
				if recs[i] != tc.recs[i] {
					t.Fatalf("record %d:\n got %v %+v\nwant %v %+v", i, &recs[i], recs[i], &tc.recs[i], tc.recs[i])
				}
			}
		})
	}
}

func TestIPv4RecordsTravelAsFourByteAddresses(t *testing.T) {
	var r packet.Record
	r.SetSrc(netip.MustParseAddr("192.0.2.1"))
	r.SetDst(netip.MustParseAddr("198.51.100.2"))
	var p Packet
	FromRecord(&p, &r)
	if len(p.SrcIp) != 4 || len(p.DstIp) != 4 || netip.AddrFrom4([4]byte(p.SrcIp)).String() != "192.0.2.1" {
		t.Fatalf("src %x dst %x: want 4-byte addresses", p.SrcIp, p.DstIp)
	}
	r.SetSrc(netip.MustParseAddr("2001:db8::1"))
	r.SetDst(netip.MustParseAddr("2001:db8::2"))
	FromRecord(&p, &r)
	if len(p.SrcIp) != 16 || len(p.DstIp) != 16 {
		t.Fatalf("src %x dst %x: want 16-byte addresses", p.SrcIp, p.DstIp)
	}
}

func TestToRecordRejectsPacketsThatAreNoRecord(t *testing.T) {
	valid := func() *Packet {
		return &Packet{SrcIp: []byte{1, 2, 3, 4}, DstIp: []byte{5, 6, 7, 8}, NumOptions: 2, OptionKinds: []byte{2, 1}}
	}
	for _, tc := range []struct {
		name   string
		modify func(p *Packet)
		want   string
	}{
		{"no addresses", func(p *Packet) { p.SrcIp, p.DstIp = nil, nil }, "0 and 0 bytes"},
		{"mixed families", func(p *Packet) { p.DstIp = make([]byte, 16) }, "4 and 16 bytes"},
		{"5-byte address", func(p *Packet) { p.SrcIp, p.DstIp = make([]byte, 5), make([]byte, 5) }, "5 and 5 bytes"},
		{"port above 65535", func(p *Packet) { p.DstPort = 65536 }, "dst_port 65536"},
		{"window above 65535", func(p *Packet) { p.Window = 1 << 20 }, "window"},
		{"ip_id above 65535", func(p *Packet) { p.IpId = 70000 }, "ip_id"},
		{"payload_len above 65535", func(p *Packet) { p.PayloadLen = 70000 }, "payload_len"},
		{"flags above a byte", func(p *Packet) { p.Flags = 256 }, "flags 256"},
		{"ttl above a byte", func(p *Packet) { p.Ttl = 300 }, "ttl 300"},
		{"num_options above a byte", func(p *Packet) { p.NumOptions = 256 }, "num_options 256"},
		{"more kinds than num_options", func(p *Packet) { p.NumOptions = 1 }, "want 1 kinds"},
		{"fewer kinds than num_options", func(p *Packet) { p.NumOptions = 3 }, "want 3 kinds"},
		{"more kinds than kept", func(p *Packet) { p.OptionKinds = make([]byte, 13); p.NumOptions = 13 }, "want 12 kinds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := valid()
			var r packet.Record
			if err := ToRecord(&r, p); err != nil {
				t.Fatalf("valid packet: %v", err)
			}
			tc.modify(p)
			err := ToRecord(&r, p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestAppendRecordsNamesTheBadPacketAndKeepsTheOnesBefore(t *testing.T) {
	pkts := AppendPackets(nil, randomRecords(3, 1))
	pkts[2].SrcPort = 1 << 16
	recs, err := AppendRecords(nil, pkts)
	if err == nil || !strings.HasPrefix(err.Error(), "packet 2: ") {
		t.Fatalf("got %v, want an error about packet 2", err)
	}
	if len(recs) != 2 {
		t.Fatalf("got %d records, want the 2 before the bad one", len(recs))
	}
}

func TestAppendPacketsReusesMessagesWithoutAllocating(t *testing.T) {
	recs := randomRecords(256, 3)
	pkts := AppendPackets(nil, recs)
	allocs := testing.AllocsPerRun(20, func() {
		pkts = AppendPackets(pkts[:0], recs)
	})
	if allocs != 0 {
		t.Fatalf("AppendPackets into a reused slice: %.1f allocations per batch, want 0", allocs)
	}
	out := make([]packet.Record, 0, len(recs))
	allocs = testing.AllocsPerRun(20, func() {
		var err error
		if out, err = AppendRecords(out[:0], pkts); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("AppendRecords into a slice with room: %.1f allocations per batch, want 0", allocs)
	}
}

func BenchmarkAppendPacketsAndMarshal(b *testing.B) {
	recs := randomRecords(1024, 5)
	batch := &PacketBatch{Node: "node-1", Policy: "default", AgentInstance: "0123456789abcdef", Sequence: 1}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		batch.Packets = AppendPackets(batch.Packets[:0], recs)
		var err error
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], batch)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf))/float64(len(recs)), "bytes/record")
	b.ReportMetric(float64(b.N)*float64(len(recs))/b.Elapsed().Seconds(), "records/s")
}
