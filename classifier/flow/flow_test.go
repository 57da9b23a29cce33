package flow

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/connscope/connscope/packet"
)

// synthetic makes n packets of connections that arrive every gap ns, each
// SYN, ACK, PSH+ACK, then either silence (half) or RST, spaced 1 ms.
func synthetic(n int, gap int64) []packet.Record {
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([]packet.Record, 0, n)
	type pending struct {
		r    packet.Record
		left int
	}
	var open []pending
	ts := int64(1_700_000_000) * 1e9
	for len(out) < n {
		ts += gap
		var r packet.Record
		r.Timestamp = ts
		r.IPVersion = 4
		r.SrcIP = [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: byte(rng.IntN(256)), 14: byte(rng.IntN(256)), 15: byte(rng.IntN(256))}
		r.DstIP = [16]byte{10: 0xff, 11: 0xff, 12: 192, 13: 0, 14: 2, 15: 1}
		r.SrcPort = uint16(1024 + rng.IntN(60000))
		r.DstPort = 443
		r.Flags = packet.SYN
		r.Seq = rng.Uint32()
		r.TTL = 64
		out = append(out, r)
		open = append(open, pending{r, 2 + rng.IntN(3)})
		// Advance a few open connections by one packet each.
		for i := 0; i < 2 && len(open) > 0 && len(out) < n; i++ {
			j := rng.IntN(len(open))
			p := &open[j]
			q := p.r
			q.Timestamp = ts
			switch p.left {
			case 4, 3:
				q.Flags = packet.ACK
			case 2:
				q.Flags = packet.PSH | packet.ACK
			default:
				q.Flags = packet.RST
			}
			p.left--
			out = append(out, q)
			if p.left == 0 {
				open[j] = open[len(open)-1]
				open = open[:len(open)-1]
			}
		}
	}
	return out
}

func TestTableStaysConsistentUnderChurn(t *testing.T) {
	recs := synthetic(200_000, int64(20*time.Microsecond))
	finished := 0
	tab, err := New(Config{MaxOpen: 10_000}, func(c *Conn) {
		finished++
		if n := c.Summary.Packets; n == 0 || n > c.Cap {
			t.Fatalf("connection with %d packets", n)
		}
		if c.Summary.LastSeen < c.Summary.FirstSeen {
			t.Fatalf("last seen %d before first seen %d", c.Summary.LastSeen, c.Summary.FirstSeen)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		tab.Add(&recs[i])
	}
	tab.Flush()
	st := tab.Stats()
	if uint64(finished) != st.Opened || st.Opened != st.Finished {
		t.Fatalf("opened %d, finished %d, emitted %d", st.Opened, st.Finished, finished)
	}
	if st.PeakHeld > 10_000 {
		t.Fatalf("peak held %d exceeds MaxOpen", st.PeakHeld)
	}
	if st.Open != 0 || st.Held != 0 || tab.index.count != 0 {
		t.Fatalf("state left after Flush: open %d held %d index %d", st.Open, st.Held, tab.index.count)
	}
	if st.Counted+st.BeyondCap+st.Reverse+st.OrphanSYNACK != st.Packets {
		t.Fatalf("packets not accounted for: %+v", st)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{PacketCap: 65}, {PacketCap: -1}, {IdleTimeout: time.Microsecond},
		{IdleTimeout: time.Minute, Linger: time.Second}, {MaxOpen: 1},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
}

// BenchmarkAdd measures the table alone: ns per packet, and bytes of heap
// per held connection at the peak (reported as B/conn).
func BenchmarkAdd(b *testing.B) {
	// 2 µs between SYNs and a 3 s idle timeout: ~1.5 M connections held.
	recs := synthetic(4_000_000, int64(2*time.Microsecond))
	b.ResetTimer()
	var peakBytes, peakHeld float64
	for range b.N {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		tab, _ := New(Config{MaxOpen: 4 << 20}, func(*Conn) {})
		for i := range recs {
			tab.Add(&recs[i])
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		st := tab.Stats()
		peakHeld = float64(st.PeakHeld)
		peakBytes = float64(after.HeapAlloc - before.HeapAlloc)
		tab.Flush()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs)), "ns/packet")
	b.ReportMetric(peakBytes/peakHeld, "B/conn")
	b.ReportMetric(peakHeld, "held")
}

// The memory per connection rests on these sizes; a field added carelessly
// shows up here first.
func TestStateSizes(t *testing.T) {
	if s := unsafe.Sizeof(entry{}); s > 120 {
		t.Errorf("entry is %d bytes, want at most 120", s)
	}
}

// AddBatch only warms caches: it must hand out exactly what Add does, in the
// same order.
func TestAddBatchEqualsAdd(t *testing.T) {
	recs := synthetic(100_000, int64(20*time.Microsecond))
	recs = append(recs, recs[:5000]...) // late duplicates: tombstones, reuse
	run := func(batch bool) []string {
		var out []string
		tab, err := New(Config{MaxOpen: 5000}, func(c *Conn) {
			out = append(out, fmt.Sprintf("%v %d %v %+v %+v", c.Key, c.End, c.Silent, c.Summary, c.SYN))
		})
		if err != nil {
			t.Fatal(err)
		}
		if batch {
			for i := 0; i < len(recs); i += 37 { // odd sizes on purpose
				if err := tab.AddBatch(recs[i:min(i+37, len(recs))]); err != nil {
					t.Fatal(err)
				}
			}
		} else {
			for i := range recs {
				if err := tab.Add(&recs[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
		tab.Flush()
		return out
	}
	one, batched := run(false), run(true)
	if len(one) != len(batched) {
		t.Fatalf("Add finished %d connections, AddBatch %d", len(one), len(batched))
	}
	for i := range one {
		if one[i] != batched[i] {
			t.Fatalf("connection %d differs:\nAdd      %s\nAddBatch %s", i, one[i], batched[i])
		}
	}
}

func TestBadRecordIsRejected(t *testing.T) {
	tab, _ := New(Config{}, func(*Conn) {})
	r := packet.Record{IPVersion: 5}
	if err := tab.Add(&r); err != ErrBadPacket {
		t.Errorf("Add: %v", err)
	}
	if err := tab.AddBatch([]packet.Record{r}); err != ErrBadPacket {
		t.Errorf("AddBatch: %v", err)
	}
}

// A table reserves room for MaxOpen entries up front, and Close gives it
// back: on Linux the process's address space grows by the reservation and
// shrinks by it again; tables of the largest size can be made and closed
// one after the other; and a table works up to its MaxOpen.
func TestReservationAndClose(t *testing.T) {
	size := int64(MaxMaxOpen+1) * int64(unsafe.Sizeof(entry{}))
	before, linux := vmSize(t)
	tab, err := New(Config{MaxOpen: MaxMaxOpen}, func(*Conn) {})
	if err != nil {
		t.Fatal(err)
	}
	if linux {
		if during, _ := vmSize(t); during-before < size*9/10 {
			t.Errorf("address space grew by %d bytes for a reservation of %d", during-before, size)
		}
	}
	tab.Close()
	if linux {
		if after, _ := vmSize(t); after-before > size/10 {
			t.Errorf("address space still %d bytes larger after Close (reservation %d)", after-before, size)
		}
	}
	for i := 0; i < 64; i++ {
		tab, err := New(Config{MaxOpen: MaxMaxOpen}, func(*Conn) {})
		if err != nil {
			t.Fatal(err)
		}
		tab.Close()
	}
	var finished int
	tab, err = New(Config{MaxOpen: 1000}, func(*Conn) { finished++ })
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	for i := 0; i < 5000; i++ {
		r := packet.Record{Timestamp: int64(i), IPVersion: 4, SrcPort: uint16(i), DstPort: 80, Flags: packet.SYN}
		r.SrcIP[15], r.DstIP[15] = byte(i>>8), 1
		if err := tab.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	st := tab.Stats()
	if st.PeakHeld != 1000 || st.EvictedOpen != 4000 {
		t.Errorf("peak held %d (want the MaxOpen 1000), evicted open %d (want 4000)", st.PeakHeld, st.EvictedOpen)
	}
	tab.Flush()
	if finished != 5000 {
		t.Errorf("%d connections finished, want 5000", finished)
	}
}

// vmSize returns the process's address space in bytes (VmSize in
// /proc/self/status), and false where there is no /proc.
func vmSize(t *testing.T) (int64, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmSize:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10, true
		}
	}
	t.Fatal("no VmSize in /proc/self/status")
	return 0, false
}

// A connection that keeps sending late packets for hours must not stop the
// expiry of the tombstones queued behind it: when the re-queue mark was a
// saturating 32-bit µs offset, it looked unchanged after 36 minutes, and
// from then on no finished connection was forgotten after its linger.
func TestExpiryGoesOnPastALongLivedConnection(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	tab, err := New(Config{}, func(*Conn) {})
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	rec := func(ts int64, port uint16, f packet.Flags) *packet.Record {
		r := &packet.Record{Timestamp: ts, IPVersion: 4, SrcPort: port, DstPort: 443, Flags: f, Seq: 1, TTL: 64}
		r.SrcIP = [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 7}
		r.DstIP = [16]byte{10: 0xff, 11: 0xff, 12: 203, 13: 0, 14: 113, 15: 10}
		return r
	}
	add := func(r *packet.Record) {
		if err := tab.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	// Port 1 reaches the cap at once, then sends a late packet every 10 s
	// for two hours; each 10 s a short connection on a new port resets.
	add(rec(t0, 1, packet.SYN))
	for i := int64(1); i < DefaultPacketCap; i++ {
		add(rec(t0+i*int64(time.Millisecond), 1, packet.ACK))
	}
	port := uint16(100)
	for s := int64(10); s <= 7200; s += 10 {
		ts := t0 + s*int64(time.Second)
		add(rec(ts, 1, packet.ACK))
		add(rec(ts+1, port, packet.SYN))
		add(rec(ts+2, port, packet.RST))
		port++
	}
	// The linger (30 s) keeps about 4 short connections, plus port 1.
	if held := tab.Stats().Held; held > 8 {
		t.Errorf("%d connections held after two hours, want at most 8: finished connections are no longer forgotten", held)
	}
}

// Packets sharing a timestamp are held together up to the cap, taken in
// sequence order, and their block is reused by the next connection.
func TestTieGroupsStayWithinTheCapAndAreReused(t *testing.T) {
	var got []Summary
	tab, err := New(Config{PacketCap: 3}, func(c *Conn) { got = append(got, c.Summary) })
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	for port := uint16(1); port <= 2; port++ {
		// Arrival order: PSH+ACK, ACK, SYN, RST, ACK; all at one timestamp,
		// the second connection's a millisecond later (the first, at the
		// cap, is finished when the clock moves on).
		ts += int64(time.Millisecond)
		for i, p := range []struct {
			f   packet.Flags
			seq uint32
		}{{packet.PSH | packet.ACK, 101}, {packet.ACK, 101}, {packet.SYN, 100}, {packet.RST, 101}, {packet.ACK, 201}} {
			r := &packet.Record{Timestamp: ts, IPVersion: 4, SrcPort: port, DstPort: 443, Flags: p.f, Seq: p.seq, TTL: 64, IPID: uint16(i + 1)}
			r.SrcIP = [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 7}
			r.DstIP = [16]byte{10: 0xff, 11: 0xff, 12: 203, 13: 0, 14: 113, 15: 10}
			if err := tab.Add(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	tab.Flush()
	if len(got) != 2 {
		t.Fatalf("%d connections, want 2", len(got))
	}
	for i, s := range got {
		// The first three that arrived, in sequence order: SYN, PSH+ACK, ACK.
		if s.Packets != 3 || !s.FirstIsSYN || s.Data != 1 || s.RSTs != 0 || s.Pre != 3 {
			t.Errorf("connection %d: %+v, want SYN, PSH+ACK, ACK", i+1, s)
		}
	}
	if n := len(tab.ties.n); n != 2 {
		t.Errorf("%d tie blocks allocated (block 0 included), want 2: the second connection reuses the first's", n)
	}
}

// A connection waiting at the cap for the clock to move on (packets held
// at the clock's timestamp) is finished as capped, not as cut by the
// input's end or by an eviction, whichever comes first: a windowed reader
// (chstore) carries over what ended with the input.
func TestAConnectionWaitingAtTheCapEndsCapped(t *testing.T) {
	for _, how := range []string{"flush", "eviction"} {
		t.Run(how, func(t *testing.T) {
			var ends []End
			tab, err := New(Config{PacketCap: 2, MaxOpen: 2}, func(c *Conn) { ends = append(ends, c.End) })
			if err != nil {
				t.Fatal(err)
			}
			defer tab.Close()
			ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
			add := func(port uint16, f packet.Flags, seq uint32) {
				r := &packet.Record{Timestamp: ts, IPVersion: 4, SrcPort: port, DstPort: 443, Flags: f, Seq: seq, TTL: 64}
				r.SrcIP = [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 7}
				r.DstIP = [16]byte{10: 0xff, 11: 0xff, 12: 203, 13: 0, 14: 113, 15: 10}
				if err := tab.Add(r); err != nil {
					t.Fatal(err)
				}
			}
			add(1, packet.SYN, 100)
			add(1, packet.ACK, 101) // the cap, at the clock's timestamp: waiting
			if len(ends) != 0 {
				t.Fatalf("finished before the clock moved: %v", ends)
			}
			if how == "flush" {
				tab.Flush()
			} else {
				add(2, packet.SYN, 500)
				add(3, packet.SYN, 900) // MaxOpen 2: the oldest, the waiting connection, is evicted
			}
			if len(ends) != 1 || ends[0] != EndCap {
				t.Fatalf("ends %v, want one EndCap", ends)
			}
		})
	}
}
