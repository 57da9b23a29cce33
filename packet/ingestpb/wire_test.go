package ingestpb

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/connscope/connscope/packet"
)

// frameOf is what DecodeFrame must give for a PacketBatch message.
func frameOf(t *testing.T, m *PacketBatch) *Frame {
	t.Helper()
	recs, err := AppendRecords(nil, m.Packets)
	if err != nil {
		t.Fatal(err)
	}
	f := &Frame{Node: m.Node, Policy: m.Policy, AgentInstance: m.AgentInstance, Sequence: m.Sequence, Records: recs}
	if m.Counters != nil {
		f.HasCounters = true
		f.Counters.PacketsLogged, f.Counters.PacketsLostKernel = m.Counters.PacketsLogged, m.Counters.PacketsLostKernel
		f.Counters.ReceiveOverflows, f.Counters.PacketsDroppedQueueFull = m.Counters.ReceiveOverflows, m.Counters.PacketsDroppedQueueFull
		f.Counters.ReadErrors = m.Counters.ReadErrors
	}
	return f
}

func sameFrame(a, b *Frame) bool {
	if a.Node != b.Node || a.Policy != b.Policy || a.AgentInstance != b.AgentInstance || a.Sequence != b.Sequence ||
		a.HasCounters != b.HasCounters || len(a.Records) != len(b.Records) {
		return false
	}
	ca, cb := &a.Counters, &b.Counters
	if ca.PacketsLogged != cb.PacketsLogged || ca.PacketsLostKernel != cb.PacketsLostKernel || ca.ReceiveOverflows != cb.ReceiveOverflows ||
		ca.PacketsDroppedQueueFull != cb.PacketsDroppedQueueFull || ca.ReadErrors != cb.ReadErrors {
		return false
	}
	for i := range a.Records {
		if a.Records[i] != b.Records[i] {
			return false
		}
	}
	return true
}

func TestAppendBatchIsWhatProtoMarshalWrites(t *testing.T) {
	recs := append(realRecords(t), randomRecords(2000, 11)...)
	f := &Frame{Node: "node-1", Policy: "web", AgentInstance: "0123abcd", Sequence: 42, HasCounters: true,
		Counters: Counters{PacketsLogged: 1 << 40, ReceiveOverflows: 3, ReadErrors: 1}}
	m := &PacketBatch{Node: f.Node, Policy: f.Policy, AgentInstance: f.AgentInstance, Sequence: f.Sequence,
		Packets: AppendPackets(nil, recs), Counters: &AgentCounters{PacketsLogged: 1 << 40, ReceiveOverflows: 3, ReadErrors: 1}}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	got := AppendBatch(nil, f, recs)
	if !bytes.Equal(got, want) {
		var back PacketBatch
		err := proto.Unmarshal(got, &back)
		t.Fatalf("AppendBatch differs from proto.Marshal (%d and %d bytes); read back: %v, equal messages: %v",
			len(got), len(want), err, proto.Equal(&back, m))
	}
}

func TestDecodeFrameReadsWhatProtoWrites(t *testing.T) {
	recs := append(realRecords(t), randomRecords(2000, 13)...)
	for _, m := range []*PacketBatch{
		{Node: "n", Policy: "p", AgentInstance: "i", Sequence: 7, Packets: AppendPackets(nil, recs),
			Counters: &AgentCounters{PacketsLogged: 9, PacketsLostKernel: 1, ReceiveOverflows: 2, PacketsDroppedQueueFull: 3, ReadErrors: 4}},
		{Packets: AppendPackets(nil, recs[:1])}, // as the journal kept batches before
		{AgentInstance: "empty", Sequence: 1},
	} {
		wire, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var f Frame
		if err := DecodeFrame(&f, wire); err != nil {
			t.Fatal(err)
		}
		if want := frameOf(t, m); !sameFrame(&f, want) {
			t.Fatalf("DecodeFrame gives %+v, want %+v", f.Counters, want.Counters)
		}
	}
}

func TestDecodeFrameRefusesWhatAppendRecordsRefuses(t *testing.T) {
	good := AppendPackets(nil, randomRecords(3, 17))
	bad := proto.Clone(good[1]).(*Packet)
	bad.SrcPort = 70000
	wire, _ := proto.Marshal(&PacketBatch{Sequence: 1, Packets: []*Packet{good[0], bad, good[2]}})
	var f Frame
	err := DecodeFrame(&f, wire)
	if err == nil || err.Error() != "packet 1: packet src_port 70000 does not fit 16 bits" {
		t.Fatalf("DecodeFrame: %v, want packet 1's src_port named", err)
	}
	// A truncated batch.
	wire, _ = proto.Marshal(&PacketBatch{Sequence: 1, Packets: good})
	if err := DecodeFrame(&f, wire[:len(wire)-3]); err == nil {
		t.Fatal("DecodeFrame accepted a truncated batch")
	}
}

// A tag's field number above 2^29-1 is malformed protobuf, which
// proto.Unmarshal refuses; DecodeFrame must not skip it as an unknown
// field, in a batch, in a packet or in the counters (found by
// FuzzDecodeFrame; its seed field-number-above-max).
func TestDecodeFrameRefusesFieldNumbersAboveTheMaximum(t *testing.T) {
	bad := protowire.AppendVarint(nil, uint64(protowire.MaxValidNumber+1)<<3|uint64(protowire.Fixed32Type))
	bad = append(bad, 0, 0, 0, 0)
	ok := protowire.AppendVarint(nil, uint64(protowire.MaxValidNumber)<<3|uint64(protowire.Fixed32Type))
	ok = append(ok, 0, 0, 0, 0)
	nested := func(field protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, field, protowire.BytesType), v)
	}
	for _, tc := range []struct {
		name string
		wire []byte
	}{
		{"batch", bad},
		{"packet", nested(5, bad)},
		{"counters", nested(6, bad)},
	} {
		var m PacketBatch
		if err := proto.Unmarshal(tc.wire, &m); err == nil {
			t.Fatalf("%s: proto.Unmarshal accepts it; the test's premise is wrong", tc.name)
		}
		var f Frame
		if err := DecodeFrame(&f, tc.wire); err == nil {
			t.Errorf("%s: DecodeFrame accepted field number %d", tc.name, protowire.MaxValidNumber+1)
		}
	}
	var f Frame
	if err := DecodeFrame(&f, ok); err != nil {
		t.Errorf("DecodeFrame refused the largest valid field number as unknown: %v", err)
	}
}

func TestDecodeFrameAllocatesNothingPerPacket(t *testing.T) {
	recs := randomRecords(1024, 19)
	wire := AppendBatch(nil, &Frame{Node: "n", Policy: "p", AgentInstance: "i", Sequence: 1}, recs)
	var f Frame
	allocs := testing.AllocsPerRun(20, func() {
		if err := DecodeFrame(&f, wire); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 3 { // the three strings
		t.Fatalf("DecodeFrame of 1024 packets: %.1f allocations, want at most 3", allocs)
	}
}

// FuzzDecodeFrame checks that DecodeFrame accepts exactly what
// proto.Unmarshal and AppendRecords accept, with the same result.
func FuzzDecodeFrame(f *testing.F) {
	recs := randomRecords(4, 23)
	f.Add(AppendBatch(nil, &Frame{Node: "n", Policy: "p", AgentInstance: "i", Sequence: 1, HasCounters: true,
		Counters: Counters{PacketsLogged: 5}}, recs))
	f.Add(AppendBatch(nil, &Frame{}, recs[:1]))
	unknown := protowire.AppendTag(nil, 99, protowire.BytesType)
	f.Add(append(protowire.AppendBytes(unknown, []byte{1, 2}), AppendBatch(nil, &Frame{Sequence: 3}, recs[1:2])...))
	f.Add([]byte{0x2a, 0x02, 0x10, 0x01}) // a packet with only src_port
	f.Add([]byte{0x0a, 0x01, 0xff})       // node not UTF-8
	f.Fuzz(func(t *testing.T, b []byte) {
		var m PacketBatch
		want := &Frame{}
		errP := proto.Unmarshal(b, &m)
		if errP == nil {
			var recs []packet.Record
			recs, errP = AppendRecords(nil, m.Packets)
			want = frameOf(t, &PacketBatch{Node: m.Node, Policy: m.Policy, AgentInstance: m.AgentInstance, Sequence: m.Sequence, Counters: m.Counters})
			want.Records = recs
		}
		var got Frame
		err := DecodeFrame(&got, b)
		if (err == nil) != (errP == nil) {
			t.Fatalf("DecodeFrame: %v; proto.Unmarshal and AppendRecords: %v", err, errP)
		}
		if err == nil && !sameFrame(&got, want) {
			t.Fatalf("DecodeFrame gives %+v, proto %+v", got, want)
		}
	})
}

func BenchmarkDecodeFrame(b *testing.B) {
	recs := randomRecords(1024, 29)
	wire := AppendBatch(nil, &Frame{Node: "node-1", Policy: "default", AgentInstance: "0123456789abcdef", Sequence: 1}, recs)
	var f Frame
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeFrame(&f, wire); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*float64(len(recs))/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkAppendBatch(b *testing.B) {
	recs := randomRecords(1024, 31)
	f := &Frame{Node: "node-1", Policy: "default", AgentInstance: "0123456789abcdef", Sequence: 1}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendBatch(buf[:0], f, recs)
	}
	b.ReportMetric(float64(b.N)*float64(len(recs))/b.Elapsed().Seconds(), "records/s")
}
