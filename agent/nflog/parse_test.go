package nflog

// Tests of configuration and message parsing that need no privileges:
// datagrams are built with github.com/ti-mo/netfilter's encoder, the way
// the kernel lays them out.

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

func TestConfigDefaults(t *testing.T) {
	got := Config{Group: 7}.withDefaults()
	want := Config{Group: 7, CopyRange: 128, QueueThreshold: 512, FlushTimeout: 100 * time.Millisecond, ReadBuffer: 8 << 20}
	if got != want {
		t.Errorf("defaults: got %+v, want %+v", got, want)
	}
	if err := got.validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	if got.timeoutHundredths() != 10 || got.nlbufsiz() != nlbufsizBest {
		t.Errorf("defaults: timeout %d/100 s, nlbufsiz %d", got.timeoutHundredths(), got.nlbufsiz())
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"smallest copy range", Config{CopyRange: 40}, ""},
		{"copy range below an IP and TCP header", Config{CopyRange: 39}, "copy range 39 is below 40 bytes"},
		{"largest copy range", Config{CopyRange: 65535}, ""},
		{"queue threshold too large", Config{QueueThreshold: MaxQueueThreshold + 1}, "queue threshold 65537 is above 65536"},
		{"negative flush timeout", Config{FlushTimeout: -time.Second}, "flush timeout -1s is negative"},
		{"flush timeout too long", Config{FlushTimeout: 2 * time.Hour}, "flush timeout 2h0m0s is above 1h0m0s"},
		{"negative read buffer", Config{ReadBuffer: -1}, "read buffer -1 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.withDefaults().validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigKernelUnits(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		want    uint32
	}{
		{time.Nanosecond, 1}, {10 * time.Millisecond, 1}, {11 * time.Millisecond, 2}, {time.Second, 100}, {time.Hour, 360000},
	} {
		if got := (Config{FlushTimeout: tc.timeout}).timeoutHundredths(); got != tc.want {
			t.Errorf("timeout %v: %d/100 s, want %d", tc.timeout, got, tc.want)
		}
	}
	if got := (Config{QueueThreshold: 1 << 16, CopyRange: 65535}).nlbufsiz(); got != nlbufsizBest {
		t.Errorf("nlbufsiz of a huge batch: %d, want %d", got, nlbufsizBest)
	}
	if got := (Config{QueueThreshold: 16, CopyRange: 128}).nlbufsiz(); got != 16*(128+256) {
		t.Errorf("nlbufsiz of a batch of 16: %d, want room for 16 packets, %d", got, 16*(128+256))
	}
	if nlbufsizBest > nlbufsizMax {
		t.Errorf("nlbufsizBest %d is above the kernel's maximum %d", nlbufsizBest, nlbufsizMax)
	}
}

// testPacket describes one NFULNL_MSG_PACKET message to encode.
type testPacket struct {
	seq         uint32
	noSeq       bool
	family      netfilter.ProtoFamily
	hwProto     uint16
	hook        uint8
	mark        uint32
	tsSec       uint64
	tsUsec      uint64
	indev       uint32
	outdev      uint32
	prefix      string // encoded with a trailing NUL, as the kernel does
	payload     []byte
	extraAttrTy uint16 // an attribute this package does not read
}

func encodeMessage(tb testing.TB, typ netlink.HeaderType, flags netlink.HeaderFlags, seq uint32, data []byte) []byte {
	tb.Helper()
	m := netlink.Message{
		Header: netlink.Header{Type: typ, Flags: flags, Sequence: seq, Length: uint32(align4(nlmsgHdrLen + len(data)))},
		Data:   data,
	}
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func (p testPacket) encode(tb testing.TB, flags netlink.HeaderFlags) []byte {
	tb.Helper()
	hdr := make([]byte, 4)
	binary.BigEndian.PutUint16(hdr, p.hwProto)
	hdr[2] = p.hook
	attrs := []netfilter.Attribute{{Type: nfulaPacketHdr, Data: hdr}}
	if p.mark != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: nfulaMark, Data: netfilter.Uint32Bytes(p.mark)})
	}
	if p.tsSec != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: nfulaTimestamp, Data: append(netfilter.Uint64Bytes(p.tsSec), netfilter.Uint64Bytes(p.tsUsec)...)})
	}
	if p.indev != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: nfulaIfindexIndev, Data: netfilter.Uint32Bytes(p.indev)})
	}
	if p.outdev != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: nfulaIfindexOutdev, Data: netfilter.Uint32Bytes(p.outdev)})
	}
	if p.extraAttrTy != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: p.extraAttrTy, Data: []byte{1, 2, 3}})
	}
	attrs = append(attrs, netfilter.Attribute{Type: nfulaPrefix, Data: append([]byte(p.prefix), 0)})
	if p.payload != nil {
		attrs = append(attrs, netfilter.Attribute{Type: nfulaPayload, Data: p.payload})
	}
	if !p.noSeq {
		attrs = append(attrs, netfilter.Attribute{Type: nfulaSeq, Data: netfilter.Uint32Bytes(p.seq)})
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysULOG,
		MessageType: nfulnlMsgPacket,
		Family:      p.family,
		Version:     unix.NFNETLINK_V0,
		Flags:       flags,
	}, attrs)
	if err != nil {
		tb.Fatal(err)
	}
	return encodeMessage(tb, m.Header.Type, flags, 0, m.Data)
}

// batch encodes packets as the kernel sends a batch of more than one: each
// message flagged NLM_F_MULTI, then NLMSG_DONE.
func batch(tb testing.TB, pkts ...testPacket) []byte {
	tb.Helper()
	if len(pkts) == 1 {
		return pkts[0].encode(tb, 0)
	}
	var b []byte
	for _, p := range pkts {
		b = append(b, p.encode(tb, netlink.Multi)...)
	}
	return append(b, encodeMessage(tb, nlmsgDone, netlink.Multi, 0, make([]byte, nfgenLen))...)
}

// handleAll runs handle over b and returns copies of the packets.
func handleAll(c *Conn, b []byte) []Packet {
	var out []Packet
	c.handle(b, func(p *Packet) {
		q := *p
		q.Payload = bytes.Clone(p.Payload)
		q.Prefix = bytes.Clone(p.Prefix)
		out = append(out, q)
	}, 0)
	return out
}

func newTestConn() *Conn {
	c := &Conn{}
	c.seqKnown = true
	return c
}

func TestHandleParsesABatch(t *testing.T) {
	ip := pattern(130) // odd lengths exercise attribute padding
	b := batch(t,
		testPacket{seq: 0, family: netfilter.ProtoIPv4, hwProto: 0x0800, hook: 0, mark: 0xbeef, tsSec: 1700000000, tsUsec: 123456, indev: 3, prefix: "cs", payload: ip[:127], extraAttrTy: 8},
		testPacket{seq: 1, family: netfilter.ProtoIPv6, hwProto: 0x86dd, hook: 4, outdev: 7, payload: ip},
		testPacket{seq: 2, family: netfilter.ProtoIPv4, hwProto: 0x0800, hook: 1, prefix: "", payload: []byte{}},
	)
	c := newTestConn()
	before := time.Now().UnixNano()
	got := handleAll(c, b)
	after := time.Now().UnixNano()
	if len(got) != 3 {
		t.Fatalf("got %d packets, want 3", len(got))
	}

	want0 := Packet{Timestamp: 1700000000*1e9 + 123456*1e3, KernelTimestamp: true, Payload: ip[:127], Seq: 0,
		Family: unix.NFPROTO_IPV4, Hook: 0, HWProtocol: 0x0800, InDev: 3, Mark: 0xbeef, Prefix: []byte("cs")}
	if !equalPacket(got[0], want0) {
		t.Errorf("packet 0:\n got %+v\nwant %+v", got[0], want0)
	}
	p := got[1]
	if p.KernelTimestamp || p.Timestamp < before || p.Timestamp > after {
		t.Errorf("packet 1 without NFULA_TIMESTAMP: timestamp %d (kernel %v), want the receive time in [%d, %d]", p.Timestamp, p.KernelTimestamp, before, after)
	}
	p.Timestamp = 0
	want1 := Packet{Payload: ip, Seq: 1, Family: unix.NFPROTO_IPV6, Hook: 4, HWProtocol: 0x86dd, OutDev: 7, Prefix: []byte{}}
	if !equalPacket(p, want1) {
		t.Errorf("packet 1:\n got %+v\nwant %+v", p, want1)
	}
	if len(got[2].Payload) != 0 || got[2].Seq != 2 || got[2].Hook != 1 {
		t.Errorf("packet 2: %+v", got[2])
	}
	if s := c.Stats(); s != (Stats{Packets: 3}) {
		t.Errorf("stats %+v, want 3 packets and nothing else", s)
	}
}

func equalPacket(a, b Packet) bool {
	return a.Timestamp == b.Timestamp && a.KernelTimestamp == b.KernelTimestamp &&
		bytes.Equal(a.Payload, b.Payload) && bytes.Equal(a.Prefix, b.Prefix) &&
		a.Seq == b.Seq && a.Family == b.Family && a.Hook == b.Hook && a.HWProtocol == b.HWProtocol &&
		a.InDev == b.InDev && a.OutDev == b.OutDev && a.Mark == b.Mark
}

func TestHandleCountsSequenceGaps(t *testing.T) {
	for _, tc := range []struct {
		name     string
		start    uint32 // expected next sequence number before the first packet
		seqs     [][]uint32
		wantGaps uint64
	}{
		{"consecutive", 0, [][]uint32{{0, 1, 2}, {3}}, 0},
		{"lost before the first read", 0, [][]uint32{{3, 4}}, 3},
		{"lost between batches", 0, [][]uint32{{0, 1}, {10, 11}, {12}}, 8},
		{"lost inside a batch", 0, [][]uint32{{0, 2, 5}}, 3},
		{"wrap-around", 0xfffffffe, [][]uint32{{0xfffffffe, 0xffffffff}, {0, 1}}, 0},
		{"gap across wrap-around", 0xfffffffe, [][]uint32{{0xfffffffe}, {1}}, 2},
		{"backwards resynchronises", 0, [][]uint32{{0, 1, 2}, {1, 2, 3}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestConn()
			c.nextSeq = tc.start
			var n uint64
			for _, seqs := range tc.seqs {
				var pkts []testPacket
				for _, s := range seqs {
					pkts = append(pkts, testPacket{seq: s, payload: []byte{0x45}})
				}
				n += uint64(len(handleAll(c, batch(t, pkts...))))
			}
			if s := c.Stats(); s.SeqGaps != tc.wantGaps || s.Packets != n {
				t.Errorf("stats %+v, want %d packets and %d lost", s, n, tc.wantGaps)
			}
		})
	}
}

func TestHandleCountsBadMessages(t *testing.T) {
	good := testPacket{seq: 0, payload: []byte{0x45}}.encode(t, 0)
	errMsg := func(errno int32, seq uint32) []byte {
		body := make([]byte, 4+nlmsgHdrLen)
		binary.NativeEndian.PutUint32(body, uint32(errno))
		return encodeMessage(t, nlmsgError, 0, seq, body)
	}
	badAttr := bytes.Clone(good)
	binary.NativeEndian.PutUint16(badAttr[nlmsgHdrLen+nfgenLen:], 2) // nla_len below its header
	noSeq := testPacket{noSeq: true, payload: []byte{0x45}}.encode(t, 0)
	for _, tc := range []struct {
		name        string
		datagram    []byte
		wantPackets uint64
		wantErrors  uint64
	}{
		{"message longer than the datagram", append(bytes.Clone(good[:20]), 0, 0, 0, 0), 0, 1},
		{"message length below its header", func() []byte {
			b := bytes.Clone(good)
			binary.NativeEndian.PutUint32(b, 8)
			return b
		}(), 0, 1},
		{"bad attribute skips only its message", append(badAttr, good...), 1, 1},
		{"packet without a sequence number", noSeq, 0, 1},
		{"short nfgenmsg", encodeMessage(t, nlmsgPacket, 0, 0, []byte{2, 0}), 0, 1},
		{"netlink error from the kernel", append(errMsg(-int32(unix.EINVAL), 99), good...), 1, 1},
		{"acknowledgement is not an error", errMsg(0, 99), 0, 0},
		{"overrun", encodeMessage(t, nlmsgOverrun, 0, 0, nil), 0, 1},
		{"unknown message type", encodeMessage(t, 4<<8|1, 0, 0, make([]byte, 4)), 0, 1},
		{"trailing bytes shorter than a header are ignored", append(bytes.Clone(good), 0, 0, 0, 0), 1, 0},
		{"noop", encodeMessage(t, nlmsgNoop, 0, 0, nil), 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestConn()
			handleAll(c, tc.datagram)
			if s := c.Stats(); s.Packets != tc.wantPackets || s.Errors != tc.wantErrors {
				t.Errorf("stats %+v, want %d packets and %d errors", s, tc.wantPackets, tc.wantErrors)
			}
		})
	}
}

func TestHandleReportsTheAcknowledgement(t *testing.T) {
	body := make([]byte, 4+nlmsgHdrLen)
	eperm := -int32(unix.EPERM)
	binary.NativeEndian.PutUint32(body, uint32(eperm))
	ack := encodeMessage(t, nlmsgError, 0, 42, body)
	other := encodeMessage(t, nlmsgError, 0, 41, body)
	c := newTestConn()
	pkt := testPacket{payload: []byte{0x45}}.encode(t, 0)
	if errno, ok := c.handle(append(append(pkt, other...), ack...), func(*Packet) {}, 42); !ok || errno != unix.EPERM {
		t.Errorf("handle: errno %v acked %v, want EPERM true", errno, ok)
	}
	if s := c.Stats(); s.Packets != 1 || s.Errors != 1 {
		t.Errorf("stats %+v, want the packet counted and the other request's error counted", s)
	}
}

func TestHandleDoesNotAllocate(t *testing.T) {
	var pkts []testPacket
	for i := range 64 {
		pkts = append(pkts, testPacket{seq: uint32(i), family: 2, hwProto: 0x0800, tsSec: 1, indev: 1, prefix: "cs", payload: pattern(128)})
	}
	b := batch(t, pkts...)
	c := newTestConn()
	var n int
	fn := func(p *Packet) { n += len(p.Payload) }
	allocs := testing.AllocsPerRun(100, func() {
		c.nextSeq = 0
		c.handle(b, fn, 0)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch of 64 packets, want 0", allocs)
	}
}

// FuzzHandle feeds arbitrary datagrams to the parser: it must not panic,
// and every slice it hands out must lie within the datagram.
func FuzzHandle(f *testing.F) {
	f.Add(batch(f, testPacket{seq: 1, tsSec: 5, prefix: "x", payload: pattern(60)}, testPacket{seq: 3, payload: pattern(3)}))
	f.Add(testPacket{seq: 0, payload: []byte{0x45}}.encode(f, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c := newTestConn()
		c.handle(b, func(p *Packet) {
			for _, s := range [][]byte{p.Payload, p.Prefix} {
				if len(s) > len(b) {
					t.Fatalf("slice of %d bytes from a %d-byte datagram", len(s), len(b))
				}
			}
		}, 0)
	})
}

// BenchmarkHandle measures parsing alone: a batch of 64 headers-only
// packets as the kernel sends it with the default Config.
func BenchmarkHandle(b *testing.B) {
	var pkts []testPacket
	for i := range 64 {
		pkts = append(pkts, testPacket{seq: uint32(i), family: 2, hwProto: 0x0800, tsSec: 1, indev: 1, prefix: "cs", payload: pattern(128)})
	}
	buf := batch(b, pkts...)
	c := newTestConn()
	var n int
	fn := func(p *Packet) { n += len(p.Payload) }
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	iters := 0
	for b.Loop() {
		c.nextSeq = 0
		c.handle(buf, fn, 0)
		iters++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(iters*64), "ns/packet")
}
