// Command gencap writes a large synthetic capture for the classification
// engine's benchmark (hack/bench/run.sh): the client-to-server TCP packets
// of many interleaved connections, headers only, as a node's sampler logs
// them (shared/design/method.md §1). The server's packets are not written.
//
// Usage:
//
//	gencap [-n 5000000] [-seed 1] [-o FILE] [-linktype 101|1] [-rate 100000]
//	       [-nano] [-head N -head-out FILE]
//
// The output is a pcap file (microsecond timestamps, or nanosecond with
// -nano), link type raw IP (101) or Ethernet (1), snapshot length 128: each
// frame holds the IP and TCP headers, and the IP length field and the
// record's original length claim the payload that was on the wire. With
// -head, the first N packets also go to a second file (a prefix for peers
// too slow to read the whole capture). Exactly -n packets are written.
//
// # The mix
//
// Connections arrive as a Poisson process (-rate per second) and each is
// one of these kinds, drawn by weight (parts per 10,000). The expected
// stage, closure and signature are those of method.md for the packets as
// written; scanner tags and the TTL/IP ID jumps are tallied by the method's
// rules on the packets themselves and printed with the table.
//
//	kind               share  packets  stage          closure  signature / tags
//	normal_cap         37.8%  10-13    no_match       cap      TLS or HTTP, SYN ACK PSH+ACK ACKs..., reaches the 10-packet cap
//	normal_fin         20.0%  6-8      no_match       fin      SYN ACK PSH+ACK ACK.. FIN+ACK ACK
//	browser_rstack      9.0%  7-9      later_in_flow  reset    PSH+ACK; Data → RST+ACK (tab closed after 2 data packets)
//	browser_rst         1.0%  7-9      later_in_flow  reset    PSH+ACK; Data → RST
//	idle_keepalive      5.0%  6        no_match       timeout  two data packets, then silence
//	syn_timeout         5.0%  1        post_syn       timeout  SYN → ∅ (spoofed floods, dead clients)
//	zmap                2.4%  2        post_syn       reset    SYN → RST; zmap (IP ID 54321, win 65535, TTL 255 then kernel RST TTL 64)
//	zmap_noreply        0.6%  1        post_syn       timeout  SYN → ∅; zmap
//	masscan             1.5%  2        post_syn       reset    SYN → RST; masscan (win 1024, IP ID = dst^dport^seq)
//	nmap                1.5%  2        post_syn       reset    SYN → RST; nmap (win 1024, MSS only, DF clear)
//	syn_rstack          0.5%  2        post_syn       reset    SYN → RST+ACK
//	post_ack_drop       3.0%  2        post_ack       timeout  SYN; ACK → ∅
//	post_ack_rst        0.6%  3        post_ack       reset    SYN; ACK → RST
//	post_ack_rsts       0.3%  4-5      post_ack       reset    SYN; ACK → RST; RST (multiple_rsts, equal acks)
//	post_ack_rstack     0.4%  3        post_ack       reset    SYN; ACK → RST+ACK
//	post_ack_rstacks    0.2%  4-5      post_ack       reset    SYN; ACK → RST+ACK; RST+ACK
//	post_psh_drop       3.0%  3        post_psh       timeout  PSH+ACK → ∅ (drop after the SNI/Host)
//	psh_rst             0.8%  4        post_psh       reset    PSH+ACK → RST (single_rst)
//	psh_rstack          0.6%  4        post_psh       reset    PSH+ACK → RST+ACK
//	psh_rst_rstack      0.6%  5-6      post_psh       reset    PSH+ACK → RST; RST+ACK (rst_and_rstacks)
//	psh_rstacks         0.4%  5-6      post_psh       reset    PSH+ACK → RST+ACK; RST+ACK
//	psh_rsts_same       0.6%  5-6      post_psh       reset    PSH+ACK → RST = RST (acknumsame)
//	psh_rsts_diff       0.6%  5-6      post_psh       reset    PSH+ACK → RST ≠ RST (acknumdiff)
//	psh_rsts_zero       0.4%  5-6      post_psh       reset    PSH+ACK → RST; RST0 (acknumdiff0)
//	psh_rsts_allzero    0.2%  5-6      post_psh       reset    acknumsame0 (all ACK numbers 0): method.md §6 fits both RST = RST and RST; RST0
//	fin_then_rst        0.5%  8        later_in_flow  reset    empty signature (FIN before the RST); fin
//	multiple_syn        2.0%  2-8      excluded       -        multiple_syn (SYN retransmitted after 1 s, then a handshake or a third SYN)
//	midstream           1.5%  2-8      not classified -        packets of long-lived connections, no SYN
//
// Injected RSTs (post_ack_* and psh_*) come from a middlebox: half of the
// connections get a TTL that differs from the client's (ttl_jump), and half
// of the IPv4 ones a random IP ID (ipid_jump); the others copy the client's
// TTL and its next IP ID. 30% of the bursts share the timestamp of the
// packet that triggered them. One connection in ten (except scanners) comes
// from IPv6 clients; scanners are IPv4 only.
//
// # Timing and interleaving
//
// Each connection has a round-trip time between 5 and 250 ms (log-uniform);
// the client answers the server after one RTT, sends right after its own
// packets within 0.05-0.5 ms, and thinks between requests for an
// exponential time of mean 0.6 s, capped at 2.5 s so that no gap inside a
// connection reaches the 3 s idle timeout. Connections thus last seconds,
// and with the default 150,000 arrivals per second about 400,000 are open
// at once at the peak of a 5 M packet capture (about 650,000 connections
// over 12 s of capture time), where "open" is the classifier's view: from
// the first packet until the tenth (the cap) or until 3 s after the last
// packet. gencap computes the peak of that count and prints it. Arrivals
// stop once the planned packets reach -n, and the connections already
// open then run to their end, so the capture ends with a quieter tail in
// which every silent connection times out. One connection in
// ten has a coarse clock (timestamps cut to the millisecond), and at this
// packet rate many packets share a microsecond: equal timestamps are
// common, both within and across connections. Timestamps never decrease.
//
// Output is deterministic for a given set of flags (seed included).
//
// Addresses: 262,144 IPv4 and 32,768 IPv6 client addresses (distinct,
// drawn from the seed), four IPv4 and two IPv6 server addresses; client
// ports are chosen so that no two connections share a 5-tuple.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

// The classifier's defaults that the design numbers (peak open,
// incomplete at the end) are computed for.
const (
	packetCap   = 10
	idleTimeout = 3 * int64(time.Second)
)

// epoch is the capture's start: the seed blog post's date.
var epoch = time.Date(2024, 9, 5, 0, 0, 0, 0, time.UTC).UnixNano()

func main() {
	var o options
	flag.Int64Var(&o.packets, "n", 5_000_000, "packets to write")
	flag.Uint64Var(&o.seed, "seed", 1, "random seed; the output is a function of the flags")
	flag.StringVar(&o.out, "o", "synthetic.pcap", "output pcap file")
	flag.UintVar(&o.linkType, "linktype", 101, "link type: 101 (raw IP) or 1 (Ethernet)")
	flag.Float64Var(&o.rate, "rate", 150_000, "connection arrivals per second of capture time")
	flag.BoolVar(&o.nano, "nano", false, "nanosecond timestamps (default microsecond)")
	flag.Int64Var(&o.head, "head", 0, "also write the first N packets to -head-out")
	flag.StringVar(&o.headOut, "head-out", "", "file for the first -head packets")
	flag.Parse()
	if err := run(o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gencap:", err)
		os.Exit(1)
	}
}

type options struct {
	packets  int64
	seed     uint64
	out      string
	linkType uint
	rate     float64
	nano     bool
	head     int64
	headOut  string
}

func run(o options, report io.Writer) error {
	if o.linkType != 101 && o.linkType != 1 {
		return fmt.Errorf("-linktype %d: use 101 (raw IP) or 1 (Ethernet)", o.linkType)
	}
	if o.packets <= 0 || o.rate <= 0 {
		return fmt.Errorf("-n and -rate must be positive")
	}
	if (o.head > 0) != (o.headOut != "") {
		return fmt.Errorf("-head and -head-out go together")
	}
	start := time.Now()
	out, err := newSink(o.out, uint32(o.linkType), o.nano)
	if err != nil {
		return err
	}
	var head *sink
	if o.head > 0 {
		if head, err = newSink(o.headOut, uint32(o.linkType), o.nano); err != nil {
			return err
		}
	}
	g := newGenerator(o)
	if err := g.run(func(ts int64, frame []byte, origLen int) error {
		if head != nil && g.written < o.head {
			if err := head.w.WritePacket(ts, frame, origLen); err != nil {
				return err
			}
		}
		return out.w.WritePacket(ts, frame, origLen)
	}); err != nil {
		return err
	}
	if err := out.close(); err != nil {
		return err
	}
	if head != nil {
		if err := head.close(); err != nil {
			return err
		}
	}
	g.report(report, o, time.Since(start))
	return nil
}

// sink is a buffered pcap file.
type sink struct {
	f  *os.File
	bw *bufio.Writer
	w  *capture.PcapWriter
}

func newSink(path string, linkType uint32, nano bool) (*sink, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	w, err := capture.NewPcapWriter(bw, linkType, 128, nano)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &sink{f: f, bw: bw, w: w}, nil
}

func (s *sink) close() error {
	if err := s.bw.Flush(); err != nil {
		s.f.Close()
		return fmt.Errorf("%s: %w", s.f.Name(), err)
	}
	return s.f.Close()
}

// ---- the mix ----

type kindID uint8

const (
	kNormalCap kindID = iota
	kNormalFin
	kBrowserRSTACK
	kBrowserRST
	kIdleKeepalive
	kSynTimeout
	kZmap
	kZmapNoReply
	kMasscan
	kNmap
	kSynRSTACK
	kPostACKDrop
	kPostACKRST
	kPostACKRSTs
	kPostACKRSTACK
	kPostACKRSTACKs
	kPostPSHDrop
	kPSHRST
	kPSHRSTACK
	kPSHRSTRSTACK
	kPSHRSTACKs
	kPSHRSTsSame
	kPSHRSTsDiff
	kPSHRSTsZero
	kPSHRSTsAllZero
	kFinThenRST
	kMultipleSYN
	kMidstream
	numKinds
)

// kindSpec describes one kind of connection: its weight in the mix and
// what the method says about it.
type kindSpec struct {
	name    string
	weight  int // parts per 10,000
	stage   string
	closure string
	sig     string
	scanner bool // IPv4 scanner source pool, no IPv6
}

var kinds = [numKinds]kindSpec{
	kNormalCap:      {"normal_cap", 3780, "no_match", "cap", "", false},
	kNormalFin:      {"normal_fin", 2000, "no_match", "fin", "", false},
	kBrowserRSTACK:  {"browser_rstack", 900, "later_in_flow", "reset", "PSH+ACK; Data → RST+ACK", false},
	kBrowserRST:     {"browser_rst", 100, "later_in_flow", "reset", "PSH+ACK; Data → RST", false},
	kIdleKeepalive:  {"idle_keepalive", 500, "no_match", "timeout", "", false},
	kSynTimeout:     {"syn_timeout", 500, "post_syn", "timeout", "SYN → ∅", false},
	kZmap:           {"zmap", 240, "post_syn", "reset", "SYN → RST", true},
	kZmapNoReply:    {"zmap_noreply", 60, "post_syn", "timeout", "SYN → ∅", true},
	kMasscan:        {"masscan", 150, "post_syn", "reset", "SYN → RST", true},
	kNmap:           {"nmap", 150, "post_syn", "reset", "SYN → RST", true},
	kSynRSTACK:      {"syn_rstack", 50, "post_syn", "reset", "SYN → RST+ACK", false},
	kPostACKDrop:    {"post_ack_drop", 300, "post_ack", "timeout", "SYN; ACK → ∅", false},
	kPostACKRST:     {"post_ack_rst", 60, "post_ack", "reset", "SYN; ACK → RST", false},
	kPostACKRSTs:    {"post_ack_rsts", 30, "post_ack", "reset", "SYN; ACK → RST; RST", false},
	kPostACKRSTACK:  {"post_ack_rstack", 40, "post_ack", "reset", "SYN; ACK → RST+ACK", false},
	kPostACKRSTACKs: {"post_ack_rstacks", 20, "post_ack", "reset", "SYN; ACK → RST+ACK; RST+ACK", false},
	kPostPSHDrop:    {"post_psh_drop", 300, "post_psh", "timeout", "PSH+ACK → ∅", false},
	kPSHRST:         {"psh_rst", 80, "post_psh", "reset", "PSH+ACK → RST", false},
	kPSHRSTACK:      {"psh_rstack", 60, "post_psh", "reset", "PSH+ACK → RST+ACK", false},
	kPSHRSTRSTACK:   {"psh_rst_rstack", 60, "post_psh", "reset", "PSH+ACK → RST; RST+ACK", false},
	kPSHRSTACKs:     {"psh_rstacks", 40, "post_psh", "reset", "PSH+ACK → RST+ACK; RST+ACK", false},
	kPSHRSTsSame:    {"psh_rsts_same", 60, "post_psh", "reset", "PSH+ACK → RST = RST", false},
	kPSHRSTsDiff:    {"psh_rsts_diff", 60, "post_psh", "reset", "PSH+ACK → RST ≠ RST", false},
	kPSHRSTsZero:    {"psh_rsts_zero", 40, "post_psh", "reset", "PSH+ACK → RST; RST0", false},
	kPSHRSTsAllZero: {"psh_rsts_allzero", 20, "post_psh", "reset", "PSH+ACK → RST = RST or RST; RST0 (all ACK numbers 0, acknumsame0: method.md fits both)", false},
	kFinThenRST:     {"fin_then_rst", 50, "later_in_flow", "reset", "(empty: FIN before the RST)", false},
	kMultipleSYN:    {"multiple_syn", 200, "excluded", "-", "multiple_syn", false},
	kMidstream:      {"midstream", 150, "not classified", "-", "no SYN", false},
}

// ---- connections ----

// maxSteps bounds the packets of one connection.
const maxSteps = 14

// step is one packet of a connection, fully decided when the connection
// arrives.
type step struct {
	ts       int64 // capture time, ns since the capture's start
	seq, ack uint32
	payload  uint16
	win      uint16
	ipid     uint16
	flags    packet.Flags
	ttl      uint8
	opts     uint8 // index into optionSets
	df       bool
}

type conn struct {
	serial       uint32
	kind         kindID
	v6           bool
	nsteps, next uint8
	src, dst     [16]byte
	sport, dport uint16
	steps        [maxSteps]step
}

// TCP option kind lists, by index.
const (
	optNone = iota
	optLinuxSYN
	optLinuxData
	optWindowsSYN
	optMacSYN
	optMSS
)

var optionSets = [...][]uint8{
	optNone:       nil,
	optLinuxSYN:   {2, 4, 8, 1, 3},          // MSS, SACK permitted, timestamps, NOP, window scale
	optLinuxData:  {1, 1, 8},                // NOP, NOP, timestamps
	optWindowsSYN: {2, 1, 3, 1, 1, 4},       // MSS, NOP, WS, NOP, NOP, SACK permitted
	optMacSYN:     {2, 1, 3, 1, 1, 8, 4, 0}, // MSS, NOP, WS, NOP, NOP, TS, SACK permitted, EOL
	optMSS:        {2},
}

// ---- the generator ----

type generator struct {
	o   options
	rng *rand.Rand

	v4Clients [][16]byte
	v6Clients [][16]byte
	scanners  [][16]byte
	v4Servers [][16]byte
	v6Servers [][16]byte
	// per-pool connection counters, for collision-free client ports
	n4, n6, nScan, nMid uint64
	cum                 [numKinds]int

	slab []conn
	free []int32
	heap []hitem

	nextArrival float64 // ns
	serial      uint32
	planned     int64
	written     int64
	lastTS      int64

	// tallies
	conns, packets [numKinds]int64
	v6Conns        int64
	coarseConns    int64
	tags           map[string]int64
	starts, ends   []int64 // open intervals, classifier's view
	pending        []pendingEnd
	incomplete     [numKinds]int64
	frame          []byte
	rec            packet.Record
}

// pendingEnd is a connection that is not resolved (no RST, FIN or cap):
// if the capture ends less than the idle timeout after its last packet, the
// classifier cannot judge it.
type pendingEnd struct {
	last int64
	kind kindID
}

type hitem struct {
	ts     int64
	serial uint32
	slot   int32
}

func newGenerator(o options) *generator {
	g := &generator{
		o:    o,
		rng:  rand.New(rand.NewPCG(o.seed, 0x636f6e6e73636f70)),
		tags: map[string]int64{},
	}
	sum := 0
	for i, k := range kinds {
		sum += k.weight
		g.cum[i] = sum
	}
	seen := map[[16]byte]bool{}
	g.v4Servers = [][16]byte{v4(203, 0, 113, 10), v4(203, 0, 113, 11), v4(203, 0, 113, 12), v4(203, 0, 113, 13)}
	g.v6Servers = [][16]byte{v6(0x2001_0db8_0001_0000, 0x10), v6(0x2001_0db8_0001_0000, 0x11)}
	for _, a := range append(slices.Clone(g.v4Servers), g.v6Servers...) {
		seen[a] = true
	}
	for len(g.v4Clients) < 1<<18 {
		x := g.rng.Uint32()
		if o := x >> 24; o == 0 || o == 10 || o == 127 || o >= 224 {
			continue
		}
		a := v4(byte(x>>24), byte(x>>16), byte(x>>8), byte(x))
		if !seen[a] {
			seen[a] = true
			g.v4Clients = append(g.v4Clients, a)
		}
	}
	for len(g.v6Clients) < 1<<15 {
		// global unicast 2000::/3
		a := v6(0x2000_0000_0000_0000|g.rng.Uint64()>>3, g.rng.Uint64())
		if !seen[a] {
			seen[a] = true
			g.v6Clients = append(g.v6Clients, a)
		}
	}
	for len(g.scanners) < 256 {
		x := g.rng.Uint32()
		if o := x >> 24; o == 0 || o == 10 || o == 127 || o >= 224 {
			continue
		}
		a := v4(byte(x>>24), byte(x>>16), byte(x>>8), byte(x))
		if !seen[a] {
			seen[a] = true
			g.scanners = append(g.scanners, a)
		}
	}
	return g
}

func v4(a, b, c, d byte) [16]byte {
	return [16]byte{10: 0xff, 11: 0xff, 12: a, 13: b, 14: c, 15: d}
}

func v6(hi, lo uint64) [16]byte {
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], hi)
	binary.BigEndian.PutUint64(a[8:], lo)
	return a
}

// run emits every packet in timestamp order through emit.
func (g *generator) run(emit func(ts int64, frame []byte, origLen int) error) error {
	arriving := true
	for {
		if arriving && (len(g.heap) == 0 || int64(g.nextArrival) < g.heap[0].ts) {
			arriving = g.arrive(int64(g.nextArrival))
			g.nextArrival += g.rng.ExpFloat64() / g.o.rate * 1e9
			continue
		}
		if len(g.heap) == 0 {
			break
		}
		top := &g.heap[0]
		c := &g.slab[top.slot]
		if err := g.write(c, &c.steps[c.next], emit); err != nil {
			return err
		}
		c.next++
		if c.next < c.nsteps {
			top.ts = c.steps[c.next].ts
			g.siftDown(0)
		} else {
			g.free = append(g.free, top.slot)
			g.pop()
		}
	}
	if g.written != g.o.packets {
		return fmt.Errorf("internal error: wrote %d packets, planned %d", g.written, g.o.packets)
	}
	return nil
}

// arrive creates a connection whose first packet is at t and reports
// whether more connections may arrive.
func (g *generator) arrive(t int64) bool {
	var slot int32
	if n := len(g.free); n > 0 {
		slot, g.free = g.free[n-1], g.free[:n-1]
	} else {
		g.slab = append(g.slab, conn{})
		slot = int32(len(g.slab) - 1)
	}
	c := &g.slab[slot]
	k := g.pickKind()
	g.build(c, k, t)
	more := true
	if g.planned+int64(c.nsteps) >= g.o.packets {
		c.nsteps = uint8(g.o.packets - g.planned)
		more = false
	}
	g.planned += int64(c.nsteps)
	g.account(c)
	g.push(hitem{ts: c.steps[0].ts, serial: c.serial, slot: slot})
	return more
}

func (g *generator) pickKind() kindID {
	x := g.rng.IntN(g.cum[numKinds-1])
	for i, c := range g.cum {
		if x < c {
			return kindID(i)
		}
	}
	return kNormalCap
}

// write builds the frame of one packet and hands it to emit.
func (g *generator) write(c *conn, s *step, emit func(int64, []byte, int) error) error {
	r := &g.rec
	r.Timestamp = epoch + s.ts
	r.SrcIP, r.DstIP = c.src, c.dst
	r.SrcPort, r.DstPort = c.sport, c.dport
	r.IPVersion = 4
	if c.v6 {
		r.IPVersion = 6
	}
	r.Flags, r.Seq, r.Ack, r.Window = s.flags, s.seq, s.ack, s.win
	r.TTL, r.IPID, r.DF, r.PayloadLen = s.ttl, s.ipid, s.df, s.payload
	opts := optionSets[s.opts]
	r.NumOptions = uint8(copy(r.Options[:], opts))
	g.frame = g.frame[:0]
	if g.o.linkType == 1 {
		typ := [2]byte{0x08, 0x00}
		if c.v6 {
			typ = [2]byte{0x86, 0xdd}
		}
		g.frame = append(g.frame,
			0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // server
			0x02, 0x00, 0x00, 0x00, 0x00, 0xfe, // router
			typ[0], typ[1])
	}
	g.frame = capture.AppendPacket(g.frame, r)
	if r.Timestamp < g.lastTS {
		return fmt.Errorf("internal error: timestamp went back")
	}
	g.lastTS = r.Timestamp
	g.written++
	return emit(r.Timestamp, g.frame, len(g.frame)+int(s.payload))
}

// ---- the heap of connections by next packet time ----

func (g *generator) less(i, j int) bool {
	a, b := &g.heap[i], &g.heap[j]
	return a.ts < b.ts || a.ts == b.ts && a.serial < b.serial
}

func (g *generator) push(it hitem) {
	g.heap = append(g.heap, it)
	i := len(g.heap) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !g.less(i, p) {
			break
		}
		g.heap[i], g.heap[p] = g.heap[p], g.heap[i]
		i = p
	}
}

func (g *generator) pop() {
	n := len(g.heap) - 1
	g.heap[0] = g.heap[n]
	g.heap = g.heap[:n]
	if n > 0 {
		g.siftDown(0)
	}
}

func (g *generator) siftDown(i int) {
	n := len(g.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && g.less(r, l) {
			m = r
		}
		if !g.less(m, i) {
			return
		}
		g.heap[i], g.heap[m] = g.heap[m], g.heap[i]
		i = m
	}
}

// ---- building a connection's packets ----

// builder appends the packets of one connection, keeping the client's
// sequence and acknowledgement numbers, IP ID and clock.
type builder struct {
	g        *generator
	r        *rand.Rand
	c        *conn
	t        int64 // time of the last packet
	rtt      int64
	coarse   bool
	isn, iss uint32
	seq, ack uint32
	ipid     uint16
	ttl      uint8
	win      uint16
	df       bool
	synOpts  uint8
	dataOpts uint8
	// middlebox injection
	ttlJump, ipidJump bool
	injTTL            uint8
}

func (b *builder) add(gap int64, f packet.Flags, payload int) *step {
	c := b.c
	if int(c.nsteps) == maxSteps {
		panic("gencap: connection script longer than maxSteps")
	}
	b.t += gap
	ts := b.t
	if b.coarse {
		ts = ceilMilli(ts)
	}
	s := &c.steps[c.nsteps]
	c.nsteps++
	*s = step{ts: ts, seq: b.seq, ack: b.ack, payload: uint16(payload), win: b.win, ipid: b.ipid,
		flags: f, ttl: b.ttl, opts: b.dataOpts, df: b.df}
	if !f.Has(packet.ACK) && !f.Has(packet.RST) {
		s.ack = 0
	}
	if f.Has(packet.SYN) {
		s.opts = b.synOpts
	}
	if !c.v6 {
		b.ipid++
	}
	b.seq += uint32(payload)
	if f.Has(packet.SYN) || f.Has(packet.FIN) {
		b.seq++
	}
	return s
}

// ceilMilli is a coarse clock: time rounded up to the millisecond. Up, not
// down, so that a connection's first packet is never earlier than packets
// of other connections already written.
func ceilMilli(t int64) int64 {
	const ms = int64(time.Millisecond)
	return (t + ms - 1) / ms * ms
}

func (b *builder) syn(gap int64) *step {
	b.seq = b.isn
	return b.add(gap, packet.SYN, 0)
}

// handshake: SYN, then the ACK of the SYN+ACK one RTT later.
func (b *builder) handshake() {
	b.syn(0)
	b.ack = b.iss + 1
	b.add(b.rtt, packet.ACK, 0)
}

func (b *builder) fast() int64 { return 50_000 + b.r.Int64N(450_000) }

func (b *builder) think() int64 {
	return min(int64(b.r.ExpFloat64()*600e6), int64(2500*time.Millisecond))
}

// reply: the server's data (n bytes) arrives one RTT after the client's
// last packet, and the client acknowledges it.
func (b *builder) reply(n int) {
	b.ack += uint32(n)
	b.add(b.rtt+b.r.Int64N(b.rtt/4+1), packet.ACK, 0)
}

func (b *builder) hello() int {
	if b.c.dport == 80 {
		return 120 + b.r.IntN(700)
	}
	return 517 - 2*b.r.IntN(3)*64 // 517, 389, 261: common ClientHello sizes
}

// inject appends a middlebox RST (flags RST or RST+ACK) with acknowledgement
// number ack.
func (b *builder) inject(gap int64, f packet.Flags, ack uint32) {
	ipid := b.ipid // the client's next IP ID; its last packet had ipid-1
	s := b.add(gap, f, 0)
	s.ack = ack
	s.win = 0
	s.opts = optNone
	s.ttl = b.injTTL
	if b.c.v6 {
		return
	}
	b.ipid = ipid // the middlebox does not advance the client's counter
	if b.ipidJump {
		for {
			id := uint16(b.r.Uint32())
			if d := id - (ipid - 1); id != 0 && d > 1 && d < 0xffff {
				s.ipid = id
				break
			}
		}
	} else {
		s.ipid = ipid
	}
}

// burstGap is the gap before the first injected packet: 30% share the
// trigger's timestamp.
func (b *builder) burstGap() int64 {
	if b.r.IntN(10) < 3 {
		return 0
	}
	return 20_000 + b.r.Int64N(480_000)
}

func (b *builder) nonzeroAck() uint32 {
	if b.ack == 0 {
		b.ack = 1
	}
	return b.ack
}

func (g *generator) build(c *conn, k kindID, t int64) {
	r := g.rng
	g.serial++
	*c = conn{serial: g.serial, kind: k}
	spec := &kinds[k]
	b := builder{g: g, r: r, c: c, t: t}
	b.rtt = int64(5e6 * math.Exp(r.Float64()*math.Log(50)))
	b.coarse = !spec.scanner && r.IntN(10) == 0
	b.isn, b.iss = r.Uint32(), r.Uint32()
	b.ipid = uint16(r.Uint32())
	hops := uint8(3 + r.IntN(18))

	// addresses and ports
	switch {
	case spec.scanner:
		i := g.nScan
		g.nScan++
		c.src = g.scanners[i%uint64(len(g.scanners))]
		c.sport = clientPort(32768, 28000, i, uint64(len(g.scanners)))
		c.dst = g.v4Servers[r.IntN(len(g.v4Servers))]
		c.dport = scanPorts[r.IntN(len(scanPorts))]
	case k == kMidstream:
		i := g.nMid
		g.nMid++
		c.src = g.v4Clients[i%uint64(len(g.v4Clients))]
		c.sport = clientPort(1024, 31000, i, uint64(len(g.v4Clients)))
		c.dst = g.v4Servers[r.IntN(len(g.v4Servers))]
		c.dport = 443
	case r.IntN(10) == 0:
		c.v6 = true
		i := g.n6
		g.n6++
		n := uint64(len(g.v6Clients))
		c.src = g.v6Clients[i%n]
		c.sport = clientPort(32768, 28000, i, n)
		c.dst = g.v6Servers[r.IntN(len(g.v6Servers))]
	default:
		i := g.n4
		g.n4++
		n := uint64(len(g.v4Clients))
		c.src = g.v4Clients[i%n]
		c.sport = clientPort(32768, 28000, i, n)
		c.dst = g.v4Servers[r.IntN(len(g.v4Servers))]
	}
	if c.dport == 0 {
		c.dport = 443
		if r.IntN(100) < 15 {
			c.dport = 80
		}
	}

	// client stack
	switch x := r.IntN(100); {
	case x < 55: // Linux, Android
		b.ttl, b.win, b.synOpts, b.dataOpts = 64-hops, 64240, optLinuxSYN, optLinuxData
	case x < 90: // Windows
		b.ttl, b.win, b.synOpts, b.dataOpts = 128-hops, 64240, optWindowsSYN, optNone
	default: // macOS, iOS
		b.ttl, b.win, b.synOpts, b.dataOpts = 64-hops, 65535, optMacSYN, optLinuxData
	}
	b.df = !c.v6
	b.ttlJump = r.IntN(2) == 0
	b.ipidJump = !c.v6 && r.IntN(2) == 0
	b.injTTL = b.ttl
	if b.ttlJump {
		// a middlebox a few hops from the server, with its own initial TTL
		b.injTTL = []uint8{64, 128, 255}[r.IntN(3)] - uint8(1+r.IntN(3))
		if d := int(b.injTTL) - int(b.ttl); d >= -1 && d <= 1 {
			b.injTTL -= 8
		}
	}

	switch k {
	case kNormalCap:
		n := 10 + r.IntN(4)
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		data := true
		for int(c.nsteps) < n {
			switch {
			case data:
				b.reply(1448 * (1 + r.IntN(4)))
				data = false
			case r.IntN(2) == 0:
				b.ack += 2896
				b.add(b.fast()+r.Int64N(5e6), packet.ACK, 0)
			default:
				b.add(b.think(), packet.PSH|packet.ACK, 80+r.IntN(900))
				data = true
			}
		}
	case kNormalFin:
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		b.reply(1448 * (1 + r.IntN(3)))
		for i := r.IntN(3); i > 0; i-- {
			b.ack += 1448
			b.add(b.fast(), packet.ACK, 0)
		}
		b.add(b.think(), packet.FIN|packet.ACK, 0)
		b.ack++ // the server's FIN
		b.add(b.rtt, packet.ACK, 0)
	case kBrowserRSTACK, kBrowserRST:
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		b.reply(2896 + r.IntN(3000))
		b.add(b.fast(), packet.PSH|packet.ACK, 80+r.IntN(600))
		b.reply(1448 * (1 + r.IntN(3)))
		for i := r.IntN(3); i > 0; i-- {
			b.ack += 1448
			b.add(b.fast(), packet.ACK, 0)
		}
		f := packet.RST | packet.ACK
		if k == kBrowserRST {
			f = packet.RST
		}
		s := b.add(b.think(), f, 0)
		s.win, s.opts = 0, optNone
	case kIdleKeepalive:
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		b.reply(2896 + r.IntN(3000))
		b.add(b.fast(), packet.PSH|packet.ACK, 80+r.IntN(600))
		b.reply(1448 * (1 + r.IntN(3)))
	case kSynTimeout:
		b.syn(0)
	case kZmap, kZmapNoReply:
		b.ttl, b.win, b.df, b.synOpts = 255-hops, 65535, false, optNone
		s := b.syn(0)
		s.ipid = 54321
		if k == kZmap { // the scanning host's kernel answers the SYN+ACK
			s := b.add(b.rtt, packet.RST, 0)
			s.ack, s.win, s.ttl, s.ipid, s.df, s.opts = 0, 0, 64-hops, 0, true, optNone
		}
	case kMasscan:
		b.ttl, b.win, b.df, b.synOpts = 255-hops, 1024, false, optNone
		s := b.syn(0)
		s.ipid = uint16(packet.IPv4Of(c.dst) ^ uint32(c.dport) ^ s.seq)
		s = b.add(b.rtt, packet.RST, 0) // masscan's own RST
		s.ack, s.win, s.ipid, s.opts = 0, 0, uint16(r.Uint32()), optNone
	case kNmap:
		b.ttl, b.win, b.df, b.synOpts = uint8(37+r.IntN(23))-hops, 1024, false, optMSS
		b.syn(0)
		s := b.add(b.rtt, packet.RST, 0) // the scanning host's kernel
		s.ack, s.win, s.ttl, s.ipid, s.df, s.opts = 0, 0, 64-hops, 0, true, optNone
	case kSynRSTACK:
		b.syn(0)
		b.ack = b.iss + 1
		s := b.add(b.rtt, packet.RST|packet.ACK, 0)
		s.win, s.opts = 0, optNone
	case kPostACKDrop:
		b.handshake()
	case kPostACKRST, kPostACKRSTs, kPostACKRSTACK, kPostACKRSTACKs:
		b.handshake()
		f := packet.RST
		if k == kPostACKRSTACK || k == kPostACKRSTACKs {
			f |= packet.ACK
		}
		n := 1
		if k == kPostACKRSTs || k == kPostACKRSTACKs {
			n = 2 + r.IntN(2)
		}
		ack := b.nonzeroAck()
		b.inject(b.fast()+r.Int64N(30e6), f, ack)
		for i := 1; i < n; i++ {
			b.inject(r.Int64N(20_000), f, ack)
		}
	case kPostPSHDrop:
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
	case kPSHRST, kPSHRSTACK, kPSHRSTRSTACK, kPSHRSTACKs, kPSHRSTsSame, kPSHRSTsDiff, kPSHRSTsZero, kPSHRSTsAllZero:
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		ack := b.nonzeroAck()
		gap := b.burstGap()
		n := 2 + r.IntN(2)
		switch k {
		case kPSHRST:
			b.inject(gap, packet.RST, ack)
		case kPSHRSTACK:
			b.inject(gap, packet.RST|packet.ACK, ack)
		case kPSHRSTRSTACK:
			if r.IntN(2) == 0 {
				b.inject(gap, packet.RST, ack)
				b.inject(r.Int64N(20_000), packet.RST|packet.ACK, ack)
			} else {
				b.inject(gap, packet.RST|packet.ACK, ack)
				b.inject(r.Int64N(20_000), packet.RST, ack)
			}
			if n == 3 {
				b.inject(r.Int64N(20_000), packet.RST|packet.ACK, ack)
			}
		case kPSHRSTACKs:
			for i := 0; i < n; i++ {
				b.inject(gap, packet.RST|packet.ACK, ack)
				gap = r.Int64N(20_000)
			}
		default: // multiple plain RSTs
			for i := 0; i < n; i++ {
				a := ack
				switch k {
				case kPSHRSTsDiff:
					a = ack + uint32(i)*1448
					if a == 0 {
						a = 1
					}
				case kPSHRSTsZero:
					if i > 0 {
						a = 0
					}
				case kPSHRSTsAllZero:
					a = 0
				}
				b.inject(gap, packet.RST, a)
				gap = r.Int64N(20_000)
			}
		}
	case kFinThenRST:
		b.handshake()
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		b.reply(2896 + r.IntN(3000))
		b.add(b.fast(), packet.PSH|packet.ACK, 80+r.IntN(600))
		b.reply(1448)
		b.add(b.think(), packet.FIN|packet.ACK, 0)
		b.ack += 1448 // data after the close: the kernel resets
		s := b.add(b.rtt, packet.RST, 0)
		s.win, s.opts = 0, optNone
	case kMultipleSYN:
		b.syn(0)
		b.syn(time.Second.Nanoseconds())
		if r.IntN(10) < 3 {
			b.syn(2 * time.Second.Nanoseconds())
			break
		}
		b.ack = b.iss + 1
		b.add(b.rtt, packet.ACK, 0)
		b.add(b.fast(), packet.PSH|packet.ACK, b.hello())
		for i := r.IntN(4); i > 0; i-- {
			b.reply(1448 * (1 + r.IntN(3)))
		}
	case kMidstream:
		b.seq, b.ack = b.isn, b.iss
		n := 2 + r.IntN(7)
		for i := 0; i < n; i++ {
			if r.IntN(3) == 0 {
				b.add(b.think(), packet.PSH|packet.ACK, 40+r.IntN(1400))
			} else {
				b.ack += 1448 * uint32(1+r.IntN(4))
				b.add(b.fast()+r.Int64N(b.rtt), packet.ACK, 0)
			}
		}
		c.steps[0].ts = t // the first packet arrives now
		if b.coarse {
			c.steps[0].ts = ceilMilli(t)
		}
	}
	if b.coarse {
		g.coarseConns++
	}
	// Timestamps must not decrease within a connection (gaps are never
	// negative, and cutting to the millisecond keeps order).
}

// clientPort is the source port of the i-th connection of a pool of n
// addresses, where connection i uses address i mod n: a per-address start
// (a hash of the address's index) stepped by a number prime to the range
// for each round, so that one address repeats a port only after span
// connections.
func clientPort(base, span int, i, n uint64) uint16 {
	h := (i % n) * 0x9e3779b97f4a7c15
	h ^= h >> 29
	return uint16(base + int((h+(i/n)*7919)%uint64(span)))
}

var scanPorts = []uint16{22, 23, 80, 443, 445, 3389, 8080, 8443, 21, 25, 53, 110, 143, 993, 995, 1433, 3306, 5432, 5900, 6379, 8000, 8888, 9200, 27017}

// ---- accounting ----

// account tallies a connection once its packets are decided: kinds, the
// classifier's open interval, tags by the method's rules.
func (g *generator) account(c *conn) {
	n := int(c.nsteps)
	g.conns[c.kind]++
	g.packets[c.kind] += int64(n)
	if c.v6 {
		g.v6Conns++
	}
	start := c.steps[0].ts
	last := c.steps[n-1].ts
	resolved := false
	counted := min(n, packetCap)
	for i := 0; i < counted; i++ {
		if c.steps[i].flags&(packet.RST|packet.FIN) != 0 {
			resolved = true
		}
	}
	end := last + idleTimeout
	if n >= packetCap {
		end = c.steps[packetCap-1].ts
		resolved = true
	}
	g.starts = append(g.starts, start)
	g.ends = append(g.ends, end)
	if !resolved {
		g.pending = append(g.pending, pendingEnd{last: c.steps[counted-1].ts, kind: c.kind})
	}
	if c.kind == kMidstream || c.kind == kMultipleSYN {
		return
	}
	// scanner tags on the SYN
	syn := &c.steps[0]
	opts := optionSets[syn.opts]
	zmap := !c.v6 && syn.ipid == 54321 && syn.win == 65535
	masscan := !c.v6 && syn.win == 1024 && syn.ipid == uint16(packet.IPv4Of(c.dst)^uint32(c.dport)^syn.seq)
	nmap := syn.win == 1024 && len(opts) == 1 && opts[0] == 2 && !syn.df
	g.tag("zmap", zmap)
	g.tag("masscan", masscan)
	g.tag("nmap", nmap)
	scanner := zmap || masscan || nmap
	var ttlJump, ipidJump bool
	lastNon := -1
	for i := 0; i < counted; i++ {
		s := &c.steps[i]
		if !s.flags.Has(packet.RST) {
			lastNon = i
			continue
		}
		if lastNon < 0 {
			continue
		}
		p := &c.steps[lastNon]
		if !(lastNon == 0 && scanner) {
			if d := int(s.ttl) - int(p.ttl); d > 1 || d < -1 {
				ttlJump = true
			}
		}
		if !c.v6 && s.ipid != 0 && p.ipid != 0 {
			if d := s.ipid - p.ipid; d > 1 && d < 0xffff {
				ipidJump = true
			}
		}
	}
	g.tag("ttl_jump", ttlJump)
	g.tag("ipid_jump", ipidJump)
}

func (g *generator) tag(name string, on bool) {
	if on {
		g.tags[name]++
	}
}

// peakOpen sweeps the open intervals and returns the largest number of
// connections open at once and when (ns since the capture's start).
func (g *generator) peakOpen() (int, int64) {
	ends := slices.Clone(g.ends)
	slices.Sort(ends)
	open, peak, at, j := 0, 0, int64(0), 0
	for _, s := range g.starts { // arrivals are in order
		for j < len(ends) && ends[j] <= s {
			j++
			open--
		}
		open++
		if open > peak {
			peak, at = open, s
		}
	}
	return peak, at
}

func (g *generator) report(w io.Writer, o options, took time.Duration) {
	end := g.lastTS - epoch
	for _, p := range g.pending {
		if p.last+idleTimeout > end {
			g.incomplete[p.kind]++
		}
	}
	var total int64
	for _, n := range g.conns {
		total += n
	}
	peak, at := g.peakOpen()
	lt := "raw IP (101)"
	if o.linkType == 1 {
		lt = "Ethernet (1)"
	}
	fmt.Fprintf(w, "gencap: %d packets, %d connections, seed %d, %s, %.0f arrivals/s, written to %s in %.1f s\n\n",
		g.written, total, o.seed, lt, o.rate, o.out, took.Seconds())
	fmt.Fprintf(w, "| kind | connections | share | packets | open at end of file | stage | closure | signature |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---|---|---|\n")
	stages := map[string]int64{}
	for k := range numKinds {
		s := kinds[k]
		fmt.Fprintf(w, "| %s | %d | %.2f%% | %d | %d | %s | %s | %s |\n", s.name, g.conns[k],
			100*float64(g.conns[k])/float64(total), g.packets[k], g.incomplete[k], s.stage, s.closure, s.sig)
		stages[s.stage] += g.conns[k] - g.incomplete[k]
	}
	var inc int64
	for _, n := range g.incomplete {
		inc += n
	}
	fmt.Fprintf(w, "\nCapture span %.2f s; %.1f%% of connections IPv6; %.1f%% with a coarse (ms) clock.\n",
		float64(end)/1e9, 100*float64(g.v6Conns)/float64(total), 100*float64(g.coarseConns)/float64(total))
	fmt.Fprintf(w, "Peak open connections as designed: %d at %.2f s (open = first packet until the %dth packet or %d s after the last).\n",
		peak, float64(at)/1e9, packetCap, idleTimeout/1e9)
	fmt.Fprintf(w, "Silent at the end of the file (no RST/FIN/cap, last packet < %d s before the end; incomplete, not classified): %d.\n",
		idleTimeout/1e9, inc)
	var classified int64
	for _, st := range []string{"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"} {
		classified += stages[st]
	}
	var parts []string
	for _, st := range []string{"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"} {
		parts = append(parts, fmt.Sprintf("%s %d (%.2f%%)", st, stages[st], 100*float64(stages[st])/float64(classified)))
	}
	fmt.Fprintf(w, "Expected stages of the %d classified connections: %s; excluded multiple_syn %d; no SYN %d.\n",
		classified, strings.Join(parts, ", "), stages["excluded"], stages["not classified"])
	fmt.Fprintf(w, "Tags by the method's rules (all connections with a SYN): zmap %d, masscan %d, nmap %d, ttl_jump %d, ipid_jump %d.\n",
		g.tags["zmap"], g.tags["masscan"], g.tags["nmap"], g.tags["ttl_jump"], g.tags["ipid_jump"])
}
