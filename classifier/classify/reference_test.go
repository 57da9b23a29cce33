package classify_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/packet"
)

// reference classifies a connection from its whole packet list, the plain
// way method.md describes it: sort them by timestamp then sequence number
// (within a timestamp the connection's SYN first, a client SYN with the
// sequence number of the first to arrive, and at one sequence number a
// packet without PSH, FIN or RST, then PSH, then FIN, then RST: the
// engine's tie rules, README "How connections are judged"), keep the first
// cap of them, and apply sections 3 to 6. The table and Classify never
// hold the packets (they keep a running summary); this is the independent
// implementation they are checked against.
func reference(recs []packet.Record, capN int, silent bool) classify.Result {
	ps := slices.Clone(recs)
	clientSYN := func(p packet.Record) bool { return p.Flags&(packet.SYN|packet.ACK) == packet.SYN }
	isn, hasSYN := uint32(0), false
	for _, p := range recs {
		if clientSYN(p) {
			isn, hasSYN = p.Seq, true
			break
		}
	}
	isSYN := func(p packet.Record) int {
		if hasSYN && clientSYN(p) && p.Seq == isn {
			return 0
		}
		return 1
	}
	rank := func(p packet.Record) int {
		for i, f := range []packet.Flags{packet.RST, packet.FIN, packet.PSH} {
			if p.Flags&f != 0 {
				return 3 - i
			}
		}
		return 0
	}
	slices.SortStableFunc(ps, func(a, b packet.Record) int {
		switch {
		case a.Timestamp != b.Timestamp:
			return cmpInt(a.Timestamp, b.Timestamp)
		case isSYN(a) != isSYN(b):
			return isSYN(a) - isSYN(b)
		case a.Seq == b.Seq:
			return rank(a) - rank(b)
		case int32(a.Seq-b.Seq) < 0:
			return -1
		}
		return 1
	})
	ps = ps[:min(len(ps), capN)]
	is := func(p packet.Record, f packet.Flags) bool { return p.Flags&f == f }
	if len(ps) == 0 || !is(ps[0], packet.SYN) || is(ps[0], packet.ACK) {
		return classify.Result{Excluded: classify.NoSYN}
	}
	syns, fins, firstRST := 0, 0, -1
	var plain, withACK []packet.Record
	for i, p := range ps {
		if is(p, packet.SYN) {
			syns++
		}
		if is(p, packet.FIN) {
			fins++
		}
		if is(p, packet.RST) {
			if firstRST < 0 {
				firstRST = i
			}
			if is(p, packet.ACK) {
				withACK = append(withACK, p)
			} else {
				plain = append(plain, p)
			}
		}
	}
	if syns > 1 {
		return classify.Result{Excluded: classify.MultipleSYN}
	}
	var r classify.Result
	switch {
	case firstRST >= 0:
		r.Closure = classify.ClosureReset
	case fins > 0:
		r.Closure = classify.ClosureFIN
	case len(ps) >= capN:
		r.Closure = classify.ClosureCap
	case silent:
		r.Closure = classify.ClosureTimeout
	default:
		return classify.Result{Closure: classify.ClosureIncomplete, Excluded: classify.Incomplete}
	}
	pre := ps
	if firstRST >= 0 {
		pre = ps[:firstRST]
	}
	data, firstData, finBefore, allACK := 0, -1, false, true
	for i, p := range pre {
		if i > 0 && !is(p, packet.ACK) {
			allACK = false
		}
		if is(p, packet.PSH) {
			if data == 0 {
				firstData = i
			}
			data++
		}
		finBefore = finBefore || is(p, packet.FIN)
	}
	anomalous := r.Closure == classify.ClosureReset || r.Closure == classify.ClosureTimeout
	switch {
	case !anomalous:
		r.Stage = classify.NoMatch
	case len(pre) == 1:
		r.Stage = classify.PostSYN
	case data == 0 && len(pre) >= 2 && allACK:
		r.Stage = classify.PostACK
	case data == 0:
		r.Stage = classify.NoMatch
	case data == 1:
		r.Stage = classify.PostPSH
	case r.Closure == classify.ClosureReset:
		r.Stage = classify.LaterInFlow
	default:
		r.Stage = classify.NoMatch
	}

	tags := map[string]bool{}
	syn := ps[0]
	v4 := syn.IPVersion == 4
	if v4 && syn.IPID == 54321 && syn.Window == 65535 {
		tags["zmap"] = true
	}
	if v4 && syn.Window == 1024 && uint16(packet.IPv4Of(syn.DstIP)^uint32(syn.DstPort)^syn.Seq) == syn.IPID {
		tags["masscan"] = true
	}
	if syn.Window == 1024 && syn.NumOptions == 1 && syn.Options[0] == 2 && !syn.DF {
		tags["nmap"] = true
	}
	scanner := tags["zmap"] || tags["masscan"] || tags["nmap"]
	if r.Closure == classify.ClosureTimeout {
		tags["timeout"] = true
	}
	if r.Closure == classify.ClosureReset {
		tags["reset"] = true
		tags["fin"] = fins > 0
		switch {
		case len(plain) > 0 && len(withACK) > 0:
			tags["rst_and_rstacks"] = true
		case len(plain) == 1:
			tags["single_rst"] = true
		case len(plain) > 1:
			tags["multiple_rsts"] = true
			same, zero := true, false
			for _, p := range plain {
				same = same && p.Ack == plain[0].Ack
				zero = zero || p.Ack == 0
			}
			switch {
			case same && plain[0].Ack == 0:
				tags["acknumsame0"] = true
			case same:
				tags["acknumsame"] = true
			case zero:
				tags["acknumdiff0"] = true
			default:
				tags["acknumdiff"] = true
			}
		case len(withACK) == 1:
			tags["single_rstack"] = true
		default:
			tags["multiple_rstacks"] = true
		}
		for i, p := range ps {
			if !is(p, packet.RST) {
				continue
			}
			ref := -1
			for j := i - 1; j >= 0; j-- {
				if !is(ps[j], packet.RST) {
					ref = j
					break
				}
			}
			if ref < 0 {
				continue
			}
			d := int(p.TTL) - int(ps[ref].TTL)
			if (d > 1 || d < -1) && !(ref == 0 && scanner) {
				tags["ttl_jump"] = true
			}
			id := int(p.IPID - ps[ref].IPID) // uint16 wrap
			if id > 1<<15 {
				id = 1<<16 - id
			}
			if v4 && p.IPID != 0 && ps[ref].IPID != 0 && id > 1 {
				tags["ipid_jump"] = true
			}
		}
	}
	for t := classify.Tag(0); t < classify.NumTags; t++ {
		if tags[t.String()] {
			r.Tags |= 1 << t
		}
	}

	if r.Stage == classify.NoMatch || finBefore {
		return r
	}
	reset := r.Closure == classify.ClosureReset
	nr, na := len(plain), len(withACK)
	sig := ""
	switch {
	case len(pre) == 1:
		switch {
		case !reset:
			sig = "SYN → ∅"
		case na == 0:
			sig = "SYN → RST"
		case nr == 0:
			sig = "SYN → RST+ACK"
		default:
			sig = "SYN → RST; RST+ACK"
		}
	case data == 0:
		p := pre[1]
		if len(pre) == 2 && is(p, packet.ACK) && p.Flags&(packet.SYN|packet.FIN|packet.RST|packet.PSH) == 0 {
			switch {
			case !reset:
				sig = "SYN; ACK → ∅"
			case na == 0 && nr == 1:
				sig = "SYN; ACK → RST"
			case na == 0:
				sig = "SYN; ACK → RST; RST"
			case nr == 0 && na == 1:
				sig = "SYN; ACK → RST+ACK"
			case nr == 0:
				sig = "SYN; ACK → RST+ACK; RST+ACK"
			}
		}
	case !is(pre[firstData], packet.ACK):
	case firstData != len(pre)-1:
		switch {
		case !reset:
		case na == 0:
			sig = "PSH+ACK; Data → RST"
		case nr == 0:
			sig = "PSH+ACK; Data → RST+ACK"
		}
	case !reset:
		sig = "PSH+ACK → ∅"
	case nr == 1 && na == 0:
		sig = "PSH+ACK → RST"
	case nr == 0 && na == 1:
		sig = "PSH+ACK → RST+ACK"
	case nr > 0 && na > 0:
		sig = "PSH+ACK → RST; RST+ACK"
	case nr == 0:
		sig = "PSH+ACK → RST+ACK; RST+ACK"
	case tags["acknumsame"] || tags["acknumsame0"]:
		sig = "PSH+ACK → RST = RST"
	case tags["acknumdiff"]:
		sig = "PSH+ACK → RST ≠ RST"
	default:
		sig = "PSH+ACK → RST; RST0"
	}
	r.Signature, _ = classify.SignatureByName(sig)
	return r
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// randomConn makes the client packets of one random connection, biased
// toward the shapes the method tells apart: handshakes, data, FINs, RSTs
// and RST+ACKs with chosen ack numbers, jumping TTLs and IP IDs, scanner
// SYNs, equal (coarse) timestamps with swapped sequence numbers, packets
// beyond the cap.
func randomConn(rng *rand.Rand, port uint16, v6 bool, t0 int64) []packet.Record {
	n := 1 + rng.IntN(13)
	alphabet := []packet.Flags{
		packet.ACK, packet.ACK, packet.PSH | packet.ACK, packet.PSH | packet.ACK, packet.PSH,
		packet.RST, packet.RST, packet.RST | packet.ACK, packet.RST | packet.ACK,
		packet.FIN | packet.ACK, packet.FIN | packet.RST | packet.ACK, packet.SYN, packet.ACK | packet.ECE,
	}
	client, server := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("198.51.100.1")
	if v6 {
		client, server = netip.MustParseAddr("2001:db8::9"), netip.MustParseAddr("2001:db8:1::1")
	}
	isn := rng.Uint32()
	ts, seq, ipid := t0, isn+1, uint16(rng.IntN(65536))
	out := make([]packet.Record, 0, n)
	for i := range n {
		var r packet.Record
		r.SetSrc(client)
		r.SetDst(server)
		r.SrcPort, r.DstPort = port, 443
		r.TTL, r.Window, r.DF = 64, 64240, true
		switch {
		case i == 0 && rng.IntN(12) > 0:
			r.Flags = packet.SYN
		case i == 0:
			r.Flags = alphabet[rng.IntN(len(alphabet))]
		default:
			r.Flags = alphabet[rng.IntN(len(alphabet))]
		}
		if r.Flags == packet.SYN {
			r.Seq = isn
			r.NumOptions, r.Options[0] = 4, 2
			switch rng.IntN(8) {
			case 0: // zmap
				r.IPID, r.Window = 54321, 65535
				ipid = 54321
			case 1: // nmap
				r.Window, r.NumOptions, r.DF = 1024, 1, false
			case 2: // masscan
				r.Window, r.NumOptions, r.DF = 1024, 0, false
				ipid = uint16(packet.IPv4Of(r.DstIP) ^ 443 ^ r.Seq)
			}
		} else {
			r.Seq = seq
			if rng.IntN(6) == 0 { // an injector's or a retransmission's number
				r.Seq = seq - uint32(rng.IntN(3))*100 + uint32(rng.IntN(2))*100
			}
		}
		if r.Flags&packet.PSH != 0 {
			r.PayloadLen = 100
			seq += 100
		}
		if r.Flags&packet.RST != 0 {
			r.Ack = []uint32{0, 5000, 5000, 6000}[rng.IntN(4)]
			r.TTL = []uint8{64, 64, 63, 100, 65}[rng.IntN(5)]
		}
		r.IPID = ipid
		switch rng.IntN(6) {
		case 0:
			r.IPID = 0
		case 1:
			r.IPID = uint16(rng.IntN(65536))
		}
		ipid++
		// Timestamps: mostly increasing, often equal (a coarse clock).
		if i > 0 && rng.IntN(3) > 0 {
			ts += int64(rng.IntN(20)) * int64(time.Millisecond)
		}
		r.Timestamp = ts
		out = append(out, r)
	}
	// Sometimes swap two neighbours that share a timestamp: arrival order
	// differs from timestamp-then-sequence order by one place.
	if n > 2 && rng.IntN(3) == 0 {
		i := 1 + rng.IntN(n-2)
		out[i].Timestamp = out[i+1].Timestamp
		out[i], out[i+1] = out[i+1], out[i]
	}
	return out
}

// TestClassifyAgreesWithTheReference runs many random connections through
// the flow table and Classify and compares each judgement with reference's,
// which sorts the whole packet list.
func TestClassifyAgreesWithTheReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	const conns = 20000
	type job struct {
		recs   []packet.Record
		silent bool
	}
	checked, reordered := 0, 0
	for i := range conns {
		recs := randomConn(rng, uint16(1024+i%60000), i%5 == 0, t0+int64(i)*int64(time.Hour))
		// End the input well after (silent) or just after the last packet.
		silent := rng.IntN(3) > 0
		end := recs[len(recs)-1].Timestamp
		for _, r := range recs {
			end = max(end, r.Timestamp)
		}
		if silent {
			end += int64(4 * time.Second)
		} else {
			end += int64(time.Millisecond)
		}
		var got []classify.Result
		var conn flow.Conn
		tab, err := flow.New(flow.Config{}, func(c *flow.Conn) {
			got = append(got, classify.Classify(c))
			conn = *c
		})
		if err != nil {
			t.Fatal(err)
		}
		for j := range recs {
			tab.Add(&recs[j])
		}
		tab.Advance(end)
		tab.Flush()
		// A connection that reuses its ports after an RST or FIN is two
		// connections to the table; the reference sees one. Compare only
		// single connections.
		if len(got) != 1 {
			continue
		}
		if conn.Summary.Reordered {
			reordered++
			continue
		}
		want := reference(recs, flow.DefaultPacketCap, conn.Silent)
		if got[0] != want {
			var dump string
			for _, r := range recs {
				dump += fmt.Sprintf("\n  %v", r.String())
			}
			t.Fatalf("connection %d:\n got  %s\n want %s\npackets:%s", i, describe(got[0]), describe(want), dump)
		}
		checked++
	}
	if checked < conns*8/10 {
		t.Fatalf("only %d of %d connections compared (%d reordered)", checked, conns, reordered)
	}
	t.Logf("%d connections agree with the reference; %d skipped as reordered", checked, reordered)
}

func describe(r classify.Result) string {
	return fmt.Sprintf("closure=%s stage=%s tags=%v sig=%q excluded=%s", r.Closure, r.Stage, r.Tags.Names(), r.Signature, r.Excluded)
}
