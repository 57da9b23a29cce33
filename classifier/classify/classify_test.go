package classify_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/packet"
)

// pk describes one client packet of a test connection. Fields left zero get
// plausible values: seq follows the SYN's ISN, TTL 64, IP ID counts up.
type pk struct {
	f     string // flags: S A P R F, e.g. "PA", "RA"
	at    time.Duration
	seq   int64 // -1: keep default
	ack   uint32
	setAk bool // use ack as given (also 0)
	ttl   uint8
	ipid  uint16
	setID bool
	win   uint16
	opts  []uint8
	df    *bool
}

const isn = 1000

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC).UnixNano()

func flags(s string) packet.Flags {
	var f packet.Flags
	for _, c := range s {
		switch c {
		case 'S':
			f |= packet.SYN
		case 'A':
			f |= packet.ACK
		case 'P':
			f |= packet.PSH
		case 'R':
			f |= packet.RST
		case 'F':
			f |= packet.FIN
		}
	}
	return f
}

type conn struct {
	client, server string
	cport, sport   uint16
	pks            []pk
}

func records(c conn) []packet.Record {
	var out []packet.Record
	seq := uint32(isn)
	for i, p := range c.pks {
		r := packet.Record{
			Timestamp: t0 + int64(p.at),
			SrcPort:   c.cport, DstPort: c.sport,
			Flags: flags(p.f),
			TTL:   64, IPID: uint16(100 + i), Window: 64240, DF: true,
		}
		r.SetSrc(netip.MustParseAddr(c.client))
		r.SetDst(netip.MustParseAddr(c.server))
		if r.Flags.Has(packet.SYN) {
			r.Seq = isn
			r.Options[0], r.Options[1], r.Options[2] = 2, 4, 8
			r.NumOptions = 3
		} else {
			r.Seq = seq
			r.Ack = 5000
		}
		if p.seq != 0 {
			r.Seq = uint32(p.seq)
		}
		if p.setAk || p.ack != 0 {
			r.Ack = p.ack
		}
		if p.ttl != 0 {
			r.TTL = p.ttl
		}
		if r.Flags.Has(packet.RST) {
			r.IPID = 0 // as a kernel's RST from no socket: IP ID rules do not apply
		}
		if p.setID || p.ipid != 0 {
			r.IPID = p.ipid
		}
		if p.win != 0 {
			r.Window = p.win
		}
		if p.opts != nil {
			r.NumOptions = uint8(copy(r.Options[:], p.opts))
		}
		if p.df != nil {
			r.DF = *p.df
		}
		if r.Flags.Has(packet.SYN) {
			seq = isn + 1
		} else if r.Flags.Has(packet.PSH) {
			r.PayloadLen = 100
			seq += 100
		}
		out = append(out, r)
	}
	return out
}

type got struct {
	key flow.Key
	r   classify.Result
	n   int
}

// run feeds the records through a flow table and classifies what comes out.
// endAt is where the input ends (relative to t0); the clock is advanced to
// it before the flush.
func run(t *testing.T, cfg flow.Config, endAt time.Duration, recs []packet.Record) ([]got, flow.Stats) {
	t.Helper()
	var out []got
	tab, err := flow.New(cfg, func(c *flow.Conn) {
		out = append(out, got{key: c.Key, r: classify.Classify(c), n: c.Summary.Packets})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if err := tab.Add(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	tab.Advance(t0 + int64(endAt))
	tab.Flush()
	return out, tab.Stats()
}

func f(b bool) *bool { return &b }

func c4(pks ...pk) conn {
	return conn{client: "198.51.100.7", server: "203.0.113.10", cport: 40000, sport: 443, pks: pks}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestClassify(t *testing.T) {
	S := func(at int) pk { return pk{f: "S", at: ms(at)} }
	A := func(at int) pk { return pk{f: "A", at: ms(at)} }
	PA := func(at int) pk { return pk{f: "PA", at: ms(at)} }
	R := func(at int) pk { return pk{f: "R", at: ms(at)} }
	RA := func(at int) pk { return pk{f: "RA", at: ms(at)} }
	Rack := func(at int, ack uint32) pk { return pk{f: "R", at: ms(at), ack: ack, setAk: true} }
	FA := func(at int) pk { return pk{f: "FA", at: ms(at)} }

	tests := []struct {
		name     string
		c        conn
		end      time.Duration // input ends at; default 10 s (everything silent)
		stage    string
		tags     string // space-separated, in tag order
		sig      string
		excluded string
	}{
		// Post-SYN
		{name: "SYN then silence is a post_syn timeout", c: c4(S(0)), stage: "post_syn", tags: "timeout", sig: "SYN → ∅"},
		{name: "SYN then RST", c: c4(S(0), R(10)), stage: "post_syn", tags: "reset single_rst", sig: "SYN → RST"},
		{name: "SYN then RST+ACK", c: c4(S(0), RA(10)), stage: "post_syn", tags: "reset single_rstack", sig: "SYN → RST+ACK"},
		{name: "SYN then RST and RST+ACK", c: c4(S(0), R(10), RA(11)), stage: "post_syn", tags: "reset rst_and_rstacks", sig: "SYN → RST; RST+ACK"},
		{name: "SYN then two RSTs", c: c4(S(0), Rack(10, 0), Rack(11, 0)), stage: "post_syn", tags: "reset multiple_rsts acknumsame0", sig: "SYN → RST"},
		// Post-ACK
		{name: "SYN ACK then silence", c: c4(S(0), A(10)), stage: "post_ack", tags: "timeout", sig: "SYN; ACK → ∅"},
		{name: "SYN and two ACKs then silence has no signature", c: c4(S(0), A(10), A(20)), stage: "post_ack", tags: "timeout"},
		{name: "SYN ACK RST", c: c4(S(0), A(10), R(20)), stage: "post_ack", tags: "reset single_rst", sig: "SYN; ACK → RST"},
		{name: "SYN ACK two RSTs same ack", c: c4(S(0), A(10), Rack(20, 7), Rack(21, 7)), stage: "post_ack", tags: "reset multiple_rsts acknumsame", sig: "SYN; ACK → RST; RST"},
		{name: "SYN ACK RST+ACK", c: c4(S(0), A(10), RA(20)), stage: "post_ack", tags: "reset single_rstack", sig: "SYN; ACK → RST+ACK"},
		{name: "SYN ACK two RST+ACKs", c: c4(S(0), A(10), RA(20), RA(21)), stage: "post_ack", tags: "reset multiple_rstacks", sig: "SYN; ACK → RST+ACK; RST+ACK"},
		{name: "SYN ACK RST and RST+ACK has no post_ack signature", c: c4(S(0), A(10), R(20), RA(21)), stage: "post_ack", tags: "reset rst_and_rstacks"},
		{name: "SYN and RST in one packet is no_match", c: c4(pk{f: "SR"}), stage: "no_match", tags: "reset single_rst"},
		{name: "SYN then a bare FIN then RST is no_match", c: c4(S(0), pk{f: "F", at: ms(10)}, R(20)), stage: "no_match", tags: "reset fin single_rst"},
		{name: "SYN then a packet without flags then silence is no_match", c: c4(S(0), pk{f: "", at: ms(10)}), stage: "no_match", tags: "timeout"},
		{name: "SYN ACK FIN+ACK RST is post_ack without signature", c: c4(S(0), A(10), FA(20), R(30)), stage: "post_ack", tags: "reset fin single_rst"},
		{name: "payload without PSH is not data", c: c4(S(0), A(10), pk{f: "A", at: ms(15)}, R(20)), stage: "post_ack", tags: "reset single_rst"},
		// Post-PSH
		{name: "one data packet then silence", c: c4(S(0), A(10), PA(20)), stage: "post_psh", tags: "timeout", sig: "PSH+ACK → ∅"},
		{name: "data then RST", c: c4(S(0), A(10), PA(20), R(30)), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		{name: "data then RST+ACK", c: c4(S(0), A(10), PA(20), RA(30)), stage: "post_psh", tags: "reset single_rstack", sig: "PSH+ACK → RST+ACK"},
		{name: "data then RST and RST+ACK", c: c4(S(0), A(10), PA(20), R(30), RA(31)), stage: "post_psh", tags: "reset rst_and_rstacks", sig: "PSH+ACK → RST; RST+ACK"},
		{name: "data then two RST+ACKs", c: c4(S(0), A(10), PA(20), RA(30), RA(31)), stage: "post_psh", tags: "reset multiple_rstacks", sig: "PSH+ACK → RST+ACK; RST+ACK"},
		{name: "data then RSTs with equal acks", c: c4(S(0), A(10), PA(20), Rack(30, 9), Rack(31, 9), Rack(32, 9)), stage: "post_psh", tags: "reset multiple_rsts acknumsame", sig: "PSH+ACK → RST = RST"},
		{name: "data then RSTs with zero acks", c: c4(S(0), A(10), PA(20), Rack(30, 0), Rack(31, 0)), stage: "post_psh", tags: "reset multiple_rsts acknumsame0", sig: "PSH+ACK → RST = RST"},
		{name: "data then RSTs with differing acks", c: c4(S(0), A(10), PA(20), Rack(30, 9), Rack(31, 1009)), stage: "post_psh", tags: "reset multiple_rsts acknumdiff", sig: "PSH+ACK → RST ≠ RST"},
		{name: "data then RSTs one ack zero", c: c4(S(0), A(10), PA(20), Rack(30, 9), Rack(31, 0)), stage: "post_psh", tags: "reset multiple_rsts acknumdiff0", sig: "PSH+ACK → RST; RST0"},
		{name: "RST not right after the data packet is a Later signature", c: c4(S(0), A(10), PA(20), A(30), RA(40)), stage: "post_psh", tags: "reset single_rstack", sig: "PSH+ACK; Data → RST+ACK"},
		{name: "ACK after data then silence has no signature", c: c4(S(0), A(10), PA(20), A(30)), stage: "post_psh", tags: "timeout"},
		// Later
		{name: "two data packets then RST", c: c4(S(0), A(10), PA(20), PA(30), R(40)), stage: "later_in_flow", tags: "reset single_rst", sig: "PSH+ACK; Data → RST"},
		{name: "two data packets then RST+ACK", c: c4(S(0), A(10), PA(20), PA(30), RA(40)), stage: "later_in_flow", tags: "reset single_rstack", sig: "PSH+ACK; Data → RST+ACK"},
		{name: "two data packets then RST and RST+ACK has no signature", c: c4(S(0), A(10), PA(20), PA(30), R(40), RA(41)), stage: "later_in_flow", tags: "reset rst_and_rstacks"},
		{name: "two data packets then silence is not anomalous", c: c4(S(0), A(10), PA(20), PA(30)), stage: "no_match", tags: "timeout"},
		// FIN, cap
		{name: "FIN close is no_match", c: c4(S(0), A(10), PA(20), A(30), FA(40), A(50)), stage: "no_match"},
		{name: "FIN before RST tags fin and has no signature", c: c4(S(0), A(10), PA(20), FA(30), RA(40)), stage: "post_psh", tags: "reset fin single_rstack"},
		{name: "FIN and RST in one packet", c: c4(S(0), A(10), PA(20), pk{f: "FRA", at: ms(30)}), stage: "post_psh", tags: "reset fin single_rstack", sig: "PSH+ACK → RST+ACK"},
		{name: "cap reached is no_match", c: c4(S(0), A(1), PA(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9)), stage: "no_match"},
		{name: "RST beyond the cap is not counted", c: c4(S(0), A(1), PA(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), R(10)), stage: "no_match"},
		// Exclusions
		{name: "retransmitted SYN is multiple_syn", c: c4(S(0), S(1000), A(1100)), excluded: "multiple_syn"},
		{name: "no SYN first is no_syn", c: c4(A(0), PA(10), A(20)), excluded: "no_syn"},
		{name: "silent less than idle at end of input is incomplete", c: c4(S(0), A(10)), end: ms(1000), excluded: "incomplete"},
		{name: "RST at end of input is judged", c: c4(S(0), A(10), R(20)), end: ms(30), stage: "post_ack", tags: "reset single_rst", sig: "SYN; ACK → RST"},
		// Ordering
		{name: "coarse timestamps are ordered by sequence number", c: c4(S(0), A(10), pk{f: "R", at: ms(20), seq: isn + 101}, pk{f: "PA", at: ms(20), seq: isn + 1}), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		{name: "equal timestamps are ordered by sequence number however many share one", c: c4(pk{f: "S"}, pk{f: "A"}, pk{f: "PA"}, pk{f: "PA"}, pk{f: "PA"}, pk{f: "R", seq: isn + 1}), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		{name: "equal timestamps in any arrival order", c: c4(pk{f: "R", seq: isn + 101}, pk{f: "A", seq: isn + 1}, pk{f: "PA", seq: isn + 1}, pk{f: "S", seq: isn}), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		{name: "packets out of timestamp order are sorted", c: c4(S(0), A(10), R(30), PA(20)), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		// IPv6
		{name: "IPv6 data then RST", c: conn{client: "2001:db8::7", server: "2001:db8:1::10", cport: 40000, sport: 443, pks: []pk{S(0), A(10), PA(20), {f: "R", at: ms(30), ttl: 99, ipid: 9}}}, stage: "post_psh", tags: "reset single_rst ttl_jump", sig: "PSH+ACK → RST"},
		// Scanners
		{name: "zmap SYN then kernel RST", c: c4(pk{f: "S", ipid: 54321, win: 65535, ttl: 255}, pk{f: "R", at: ms(5), ipid: 0, setID: true}), stage: "post_syn", tags: "reset single_rst zmap", sig: "SYN → RST"},
		{name: "masscan SYN", c: c4(pk{f: "S", win: 1024, ipid: masscanID("203.0.113.10", 443, isn), opts: []uint8{}, df: f(false)}, pk{f: "R", at: ms(5), ipid: 0, setID: true}), stage: "post_syn", tags: "reset single_rst masscan", sig: "SYN → RST"},
		{name: "nmap SYN", c: c4(pk{f: "S", win: 1024, ipid: 4242, opts: []uint8{2}, df: f(false), ttl: 45}, pk{f: "R", at: ms(5), ipid: 0, setID: true}), stage: "post_syn", tags: "reset single_rst nmap", sig: "SYN → RST"},
		{name: "window 1024 with MSS but DF set is not nmap", c: c4(pk{f: "S", win: 1024, opts: []uint8{2}}), stage: "post_syn", tags: "timeout", sig: "SYN → ∅"},
		{name: "TTL of an unscanned SYN to RST is compared", c: c4(pk{f: "S", ttl: 50}, pk{f: "R", at: ms(5), ttl: 64, ipid: 0, setID: true}), stage: "post_syn", tags: "reset single_rst ttl_jump", sig: "SYN → RST"},
		// Injection evidence
		{name: "RST with another TTL and IP ID", c: c4(S(0), A(10), pk{f: "PA", at: ms(20), ipid: 1000}, pk{f: "R", at: ms(30), ttl: 110, ipid: 31337}), stage: "post_psh", tags: "reset single_rst ttl_jump ipid_jump", sig: "PSH+ACK → RST"},
		{name: "RST with next IP ID and TTL off by one is no jump", c: c4(S(0), A(10), pk{f: "PA", at: ms(20), ipid: 65535}, pk{f: "R", at: ms(30), ttl: 63, ipid: 0, setID: true}), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		{name: "RST with the next IP ID is no jump", c: c4(S(0), A(10), pk{f: "PA", at: ms(20), ipid: 1000}, pk{f: "R", at: ms(30), ipid: 1001}), stage: "post_psh", tags: "reset single_rst", sig: "PSH+ACK → RST"},
		{name: "second RST two IP IDs after the data packet is a jump", c: c4(S(0), A(10), pk{f: "PA", at: ms(20), ipid: 1000}, pk{f: "R", at: ms(30), ipid: 1001}, pk{f: "R", at: ms(31), ipid: 1002}), stage: "post_psh", tags: "reset multiple_rsts acknumsame ipid_jump", sig: "PSH+ACK → RST = RST"},
		{name: "IP ID wrap distance two is a jump", c: c4(S(0), A(10), pk{f: "PA", at: ms(20), ipid: 65535}, pk{f: "R", at: ms(30), ipid: 2}), stage: "post_psh", tags: "reset single_rst ipid_jump", sig: "PSH+ACK → RST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			end := tc.end
			if end == 0 {
				end = 10 * time.Second
			}
			out, _ := run(t, flow.Config{}, end, records(tc.c))
			if len(out) != 1 {
				t.Fatalf("got %d connections, want 1: %+v", len(out), out)
			}
			r := out[0].r
			if r.Excluded.String() != tc.excluded || r.Stage.String() != tc.stage ||
				strings.Join(r.Tags.Names(), " ") != tc.tags || r.Signature.String() != tc.sig {
				t.Errorf("got excluded=%q stage=%q tags=%q sig=%q\nwant excluded=%q stage=%q tags=%q sig=%q",
					r.Excluded, r.Stage, strings.Join(r.Tags.Names(), " "), r.Signature,
					tc.excluded, tc.stage, tc.tags, tc.sig)
			}
		})
	}
}

func masscanID(server string, port uint16, seq uint32) uint16 {
	a := netip.MustParseAddr(server).As4()
	ip := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	return uint16(ip ^ uint32(port) ^ seq)
}

func TestSignatureStringsAreThePapers(t *testing.T) {
	want := []string{
		"SYN → ∅", "SYN → RST", "SYN → RST+ACK", "SYN → RST; RST+ACK",
		"SYN; ACK → ∅", "SYN; ACK → RST", "SYN; ACK → RST; RST", "SYN; ACK → RST+ACK", "SYN; ACK → RST+ACK; RST+ACK",
		"PSH+ACK → ∅", "PSH+ACK → RST", "PSH+ACK → RST+ACK", "PSH+ACK → RST; RST+ACK", "PSH+ACK → RST+ACK; RST+ACK",
		"PSH+ACK → RST = RST", "PSH+ACK → RST ≠ RST", "PSH+ACK → RST; RST0",
		"PSH+ACK; Data → RST", "PSH+ACK; Data → RST+ACK",
	}
	var have []string
	for s := classify.SigNone + 1; s < classify.NumSignatures; s++ {
		have = append(have, s.String())
	}
	if !slices.Equal(have, want) {
		t.Fatalf("signatures:\n%q\nwant\n%q", have, want)
	}
}

func TestReverseDirectionIsIgnored(t *testing.T) {
	c := c4(pk{f: "S"}, pk{f: "A", at: ms(10)}, pk{f: "PA", at: ms(20)}, pk{f: "R", at: ms(30)})
	recs := records(c)
	// Server packets: SYN+ACK, an ACK with data, a RST of its own.
	srv := []packet.Record{recs[0], recs[0], recs[0]}
	for i, fl := range []packet.Flags{packet.SYN | packet.ACK, packet.PSH | packet.ACK, packet.RST} {
		srv[i].SrcIP, srv[i].DstIP = recs[0].DstIP, recs[0].SrcIP
		srv[i].SrcPort, srv[i].DstPort = recs[0].DstPort, recs[0].SrcPort
		srv[i].Flags = fl
		srv[i].Timestamp = t0 + int64(ms(5+10*i))
	}
	all := []packet.Record{recs[0], srv[0], recs[1], recs[2], srv[1], srv[2], recs[3]}
	out, st := run(t, flow.Config{}, 10*time.Second, all)
	if len(out) != 1 || out[0].r.Signature != classify.SigPSHRST || out[0].n != 4 {
		t.Fatalf("got %+v", out)
	}
	if st.Reverse != 3 {
		t.Errorf("reverse packets counted %d, want 3", st.Reverse)
	}
}

// secondConn is a connection on c4's ports with another initial sequence
// number, starting at at.
func secondConn(at time.Duration) []packet.Record {
	return records(c4(pk{f: "S", at: at, seq: 777777}, pk{f: "A", at: at + ms(10), seq: 777778}, pk{f: "PA", at: at + ms(20), seq: 777778}, pk{f: "FA", at: at + ms(30), seq: 777878}))
}

func TestNewSYNWhileTheConnectionIsHeldIsMultipleSYN(t *testing.T) {
	// method.md: more than one SYN in a connection excludes it: a
	// retransmitted SYN, or one with a new sequence number before the
	// connection was closed by an RST or FIN.
	first := records(c4(pk{f: "S"}, pk{f: "A", at: ms(10)}, pk{f: "PA", at: ms(20)}))
	out, _ := run(t, flow.Config{}, 20*time.Second, append(first, secondConn(ms(500))...))
	if len(out) != 1 || out[0].r.Excluded != classify.MultipleSYN || out[0].n != 7 {
		t.Fatalf("new ISN, no RST or FIN before it: got %+v, want one connection of 7 packets excluded as multiple_syn", out)
	}
	retrans := records(c4(pk{f: "S"}, pk{f: "R", at: ms(20)}, pk{f: "S", at: ms(1000)}))
	out, _ = run(t, flow.Config{}, 20*time.Second, retrans)
	if len(out) != 1 || out[0].r.Excluded != classify.MultipleSYN || out[0].n != 3 {
		t.Fatalf("the SYN retransmitted after an RST: got %+v, want one connection of 3 packets excluded as multiple_syn", out)
	}
}

func TestANewSYNAfterAnRSTOrFINStartsANewConnection(t *testing.T) {
	// The client reuses the ports after a close: conntrack, which the agent
	// samples, starts a new connection for that SYN, and so does the
	// classifier, within the hold too, instead of making the closed one
	// multiple_syn.
	for _, tc := range []struct {
		name  string
		first []pk
		sig   classify.Signature
	}{
		{"after an RST", []pk{{f: "S"}, {f: "A", at: ms(10)}, {f: "PA", at: ms(20)}, {f: "R", at: ms(30)}}, classify.SigPSHRST},
		{"after a FIN", []pk{{f: "S"}, {f: "A", at: ms(10)}, {f: "PA", at: ms(20)}, {f: "FA", at: ms(30)}}, classify.SigNone},
		// The RST is still held (the latest packet) when the SYN arrives.
		{"right after an RST", []pk{{f: "S"}, {f: "R", at: ms(10)}}, classify.SigSYNRST},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, st := run(t, flow.Config{}, 20*time.Second, append(records(c4(tc.first...)), secondConn(ms(500))...))
			if len(out) != 2 {
				t.Fatalf("got %+v, want two connections", out)
			}
			if out[0].n != len(tc.first) || out[0].r.Excluded != classify.Included || out[0].r.Signature != tc.sig {
				t.Errorf("first: got %+v, want %d packets, signature %q", out[0], len(tc.first), tc.sig)
			}
			if out[1].n != 4 || out[1].r.Excluded != classify.Included || out[1].r.Closure != classify.ClosureFIN {
				t.Errorf("second: got %+v, want its 4 packets, closed by its FIN", out[1])
			}
			if st.Opened != 2 {
				t.Errorf("connections opened: %d, want 2", st.Opened)
			}
		})
	}
}

func TestPortReuseAfterTheHoldStartsANewConnection(t *testing.T) {
	first := records(c4(pk{f: "S"}, pk{f: "A", at: ms(10)}, pk{f: "R", at: ms(20)}))
	out, _ := run(t, flow.Config{}, time.Minute, append(first, secondConn(15*time.Second)...))
	if len(out) != 2 {
		t.Fatalf("got %d connections, want 2: %+v", len(out), out)
	}
	if out[0].r.Signature != classify.SigACKRST || out[1].r.Closure != classify.ClosureFIN {
		t.Errorf("got %v / %v", out[0].r, out[1].r)
	}
}

func TestLatePacketsWithinTheHoldBelongToTheConnection(t *testing.T) {
	// Silence longer than the idle timeout does not split a connection: an
	// RST 4 s after the ACK makes it a reset (the seed groups packets by
	// 5-tuple whatever the gaps), and SYNs retransmitted 3 and 9 s after
	// the first make it multiple_syn.
	out, _ := run(t, flow.Config{}, time.Minute, records(c4(pk{f: "S"}, pk{f: "A", at: ms(100)}, pk{f: "R", at: 4 * time.Second})))
	if len(out) != 1 || out[0].r.Closure != classify.ClosureReset || out[0].r.Signature != classify.SigACKRST {
		t.Errorf("late RST: got %+v, want one reset %q", out, classify.SigACKRST)
	}
	out, _ = run(t, flow.Config{}, time.Minute, records(c4(pk{f: "S"}, pk{f: "S", at: 3 * time.Second}, pk{f: "S", at: 9 * time.Second})))
	if len(out) != 1 || out[0].r.Excluded != classify.MultipleSYN {
		t.Errorf("SYN retransmitted at 3 and 9 s: got %+v, want multiple_syn", out)
	}
}

func TestLatePacketsOfAFinishedConnectionAreIgnored(t *testing.T) {
	// SYN at 0, silence past the hold (10 s: a timeout), then a
	// retransmitted SYN with the same ISN and a late ACK: neither opens a
	// connection.
	recs := records(c4(pk{f: "S"}, pk{f: "S", at: 11 * time.Second}, pk{f: "A", at: 12 * time.Second}))
	out, st := run(t, flow.Config{}, time.Minute, recs)
	if len(out) != 1 || out[0].r.Signature != classify.SigSYNTimeout {
		t.Fatalf("got %+v", out)
	}
	if st.BeyondCap != 2 {
		t.Errorf("late packets counted %d, want 2", st.BeyondCap)
	}
}

func TestEvictionKeepsTheTableBoundedAndCounts(t *testing.T) {
	var recs []packet.Record
	for i := range 5 {
		c := c4(pk{f: "S", at: ms(i)}, pk{f: "A", at: ms(i + 1)})
		c.cport = uint16(50000 + i)
		recs = append(recs, records(c)...)
	}
	out, st := run(t, flow.Config{MaxOpen: 2}, ms(10), recs)
	if len(out) != 5 {
		t.Fatalf("got %d connections, want 5", len(out))
	}
	evicted := 0
	for _, g := range out {
		if g.r.Excluded == classify.Evicted {
			evicted++
		}
	}
	if evicted != 3 || st.EvictedOpen != 3 || st.PeakHeld != 2 {
		t.Errorf("evicted %d (stats %d), peak held %d; want 3, 3, 2", evicted, st.EvictedOpen, st.PeakHeld)
	}
}

// Packets that share a (coarse) timestamp are ordered the connection's
// SYN first, then by sequence number, and at one sequence number an ACK
// before data and an RST last, whatever order they arrived in (README, "How
// connections are judged").
func TestPacketsOfOneTimestampAreOrderedSYNFirstThenBySequenceRSTLast(t *testing.T) {
	type order struct {
		name string
		pks  []pk
	}
	for _, tc := range []struct {
		name  string
		pks   []pk // in the order of the rule
		stage classify.Stage
		sig   classify.Signature
	}{
		{
			// An injector's RST with a sequence number behind the SYN's
			// (in serial order): still after the SYN, not a connection
			// without one.
			name:  "an RST behind the SYN's sequence number",
			pks:   []pk{{f: "S"}, {f: "R", seq: isn - 100}},
			stage: classify.PostSYN, sig: classify.SigSYNRST,
		},
		{
			// An RST sent at the sequence number of the data packet it
			// answers comes after it.
			name:  "an RST at the data packet's sequence number",
			pks:   []pk{{f: "S"}, {f: "A", at: ms(10)}, {f: "PA", at: ms(20), seq: isn + 1}, {f: "R", at: ms(20), seq: isn + 1}},
			stage: classify.PostPSH, sig: classify.SigPSHRST,
		},
		{
			// The handshake's ACK and the first data share a sequence
			// number: the ACK first.
			name:  "a whole connection in one timestamp",
			pks:   []pk{{f: "S"}, {f: "A", seq: isn + 1}, {f: "PA", seq: isn + 1}, {f: "R", seq: isn + 1}},
			stage: classify.PostPSH, sig: classify.SigPSHRST,
		},
	} {
		// The packets of the last timestamp, arriving in reverse.
		rev := slices.Clone(tc.pks)
		i := len(rev) - 1
		for i > 0 && rev[i-1].at == rev[len(rev)-1].at {
			i--
		}
		slices.Reverse(rev[i:])
		for _, o := range []order{{"in order", tc.pks}, {"the last timestamp's in reverse", rev}} {
			t.Run(tc.name+", "+o.name, func(t *testing.T) {
				out, _ := run(t, flow.Config{}, 10*time.Second, records(c4(o.pks...)))
				if len(out) != 1 || out[0].r.Stage != tc.stage || out[0].r.Signature != tc.sig {
					t.Fatalf("got %+v, want one connection: %s, %q", out, tc.stage, tc.sig)
				}
			})
		}
	}
}

func TestPacketCapIsConfigurable(t *testing.T) {
	recs := records(c4(pk{f: "S"}, pk{f: "A", at: ms(1)}, pk{f: "PA", at: ms(2)}, pk{f: "R", at: ms(3)}))
	out, _ := run(t, flow.Config{PacketCap: 3}, 10*time.Second, recs)
	if len(out) != 1 || out[0].r.Stage != classify.NoMatch || out[0].r.Closure != classify.ClosureCap || out[0].n != 3 {
		t.Fatalf("got %+v", out)
	}
}

func TestIdleTimeoutIsConfigurable(t *testing.T) {
	recs := records(c4(pk{f: "S"}, pk{f: "A", at: ms(1)}))
	out, _ := run(t, flow.Config{IdleTimeout: 10 * time.Second, Linger: 10 * time.Second}, 5*time.Second, recs)
	if len(out) != 1 || out[0].r.Excluded != classify.Incomplete {
		t.Fatalf("silent 5 s with a 10 s idle timeout: got %+v, want incomplete", out)
	}
}

// The cap keeps the first packets in order (timestamp, then sequence
// number), not the first to arrive: method.md §1 makes a connection's
// packets a set to be ordered, and §2 counts the first N of them.
func TestTheCapKeepsTheFirstPacketsInOrderNotInArrival(t *testing.T) {
	S := func(at int) pk { return pk{f: "S", at: ms(at)} }
	A := func(at int) pk { return pk{f: "A", at: ms(at)} }
	PA := func(at int) pk { return pk{f: "PA", at: ms(at)} }
	t.Run("a data packet arriving after an RST with the same timestamp and a higher sequence number", func(t *testing.T) {
		// Cap 3: SYN, ACK, then at 20 ms an RST (seq isn+11) and the data
		// packet (seq isn+1) in that arrival order. In order the first 3 are
		// SYN, ACK, PSH+ACK: the cap is reached before any RST.
		recs := records(c4(S(0), A(10), pk{f: "R", at: ms(20), seq: isn + 11}, pk{f: "PA", at: ms(20), seq: isn + 1}))
		out, st := run(t, flow.Config{PacketCap: 3}, 10*time.Second, recs)
		if len(out) != 1 || out[0].r.Closure != classify.ClosureCap || out[0].r.Stage != classify.NoMatch || out[0].r.Tags != 0 || out[0].n != 3 {
			t.Fatalf("got %+v, want one connection of 3 packets closed by the cap, no_match, no tags", out)
		}
		if st.BeyondCap != 1 {
			t.Errorf("beyond the cap: %d packets, want 1 (the RST)", st.BeyondCap)
		}
	})
	t.Run("a FIN+RST displaced by a lower sequence number is not counted", func(t *testing.T) {
		recs := records(c4(S(0), pk{f: "PA", at: ms(10)}, pk{f: "FRA", at: ms(20), seq: isn + 112}, pk{f: "R", at: ms(20), seq: isn + 111}))
		out, _ := run(t, flow.Config{PacketCap: 3}, 10*time.Second, recs)
		if len(out) != 1 || out[0].r.Signature != classify.SigPSHRST || strings.Join(out[0].r.Tags.Names(), " ") != "reset single_rst" {
			t.Fatalf("got %+v, want %q tagged reset single_rst (no fin: the FIN+RST is the fourth in order)", out, classify.SigPSHRST)
		}
	})
	t.Run("a SYN arriving after a full group of its own packets with its timestamp", func(t *testing.T) {
		// Ten ACKs, then the SYN, all with one timestamp: one connection, the
		// SYN first and nine ACKs, closed by the cap; not a connection without
		// a SYN and another one that timed out after its SYN.
		var pks []pk
		for range 10 {
			pks = append(pks, pk{f: "A", seq: isn + 1})
		}
		pks = append(pks, pk{f: "S"})
		out, _ := run(t, flow.Config{}, 10*time.Second, records(c4(pks...)))
		if len(out) != 1 || out[0].r.Excluded != classify.Included || out[0].r.Closure != classify.ClosureCap || out[0].r.Stage != classify.NoMatch || out[0].n != 10 {
			t.Fatalf("got %+v, want one connection: SYN and 9 ACKs, closed by the cap", out)
		}
	})
	t.Run("with cap 1 the SYN is the packet kept", func(t *testing.T) {
		out, _ := run(t, flow.Config{PacketCap: 1}, 10*time.Second, records(c4(pk{f: "A", seq: isn + 1}, pk{f: "S"})))
		if len(out) != 1 || out[0].r.Excluded != classify.Included || out[0].n != 1 {
			t.Fatalf("got %+v, want one connection of its SYN", out)
		}
	})
	t.Run("a SYN with a new initial sequence number beyond the cap opens a new connection", func(t *testing.T) {
		// As after any finished connection: cap 3 reached by SYN, ACK, ACK
		// at one timestamp, then a SYN of that timestamp with another ISN
		// (higher in sequence order than every packet held).
		recs := records(c4(pk{f: "S"}, pk{f: "A", seq: isn + 1}, pk{f: "A", seq: isn + 1}, pk{f: "S", seq: isn + 1000}))
		out, st := run(t, flow.Config{PacketCap: 3}, 10*time.Second, recs)
		if len(out) != 2 || out[0].r.Closure != classify.ClosureCap || out[1].r.Signature != classify.SigSYNTimeout {
			t.Fatalf("got %+v, want a connection closed by the cap, then a SYN → ∅", out)
		}
		if st.BeyondCap != 0 {
			t.Errorf("beyond the cap: %d packets, want 0", st.BeyondCap)
		}
	})
	t.Run("a connection waiting at the cap when the input ends is closed by the cap", func(t *testing.T) {
		recs := records(c4(S(0), A(10), PA(20), pk{f: "A", at: ms(20), seq: isn + 101}))
		out, _ := run(t, flow.Config{PacketCap: 4}, ms(20), recs)
		if len(out) != 1 || out[0].r.Closure != classify.ClosureCap {
			t.Fatalf("got %+v, want closure cap", out)
		}
	})
}
