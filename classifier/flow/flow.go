// Package flow assembles TCP connections from a stream of client packets, as
// method.md section 2 defines them, and hands each finished connection to a
// callback. It does not classify: package classify turns a finished Conn into
// a stage, tags and a signature.
//
// # Rules
//
//   - A connection is keyed by (client IP, client port, server IP, server
//     port); the client is the sender of the SYN (SYN set, ACK clear). A packet
//     whose reversed key belongs to a known connection comes from the server
//     and is ignored (the method is one-directional on purpose), as is a
//     SYN+ACK that belongs to no known connection.
//   - A packet that belongs to no known connection opens one, SYN or not; a
//     connection whose first packet (in timestamp, then sequence order) is not
//     a client SYN is reported as such (long-lived connections already open
//     when the capture began) and classify excludes it.
//   - Only the first PacketCap client packets of a connection are kept; the
//     rest are counted and ignored.
//   - A connection is all the client packets of its key while it is held
//     (method.md groups packets by 5-tuple, whatever the gaps between them):
//     a late RST is still a reset, and a second SYN, retransmitted or with a
//     new sequence number, makes it multiple_syn. It is finished, and handed
//     to the callback, when it reaches the packet cap, when it has been
//     silent (no client packet) for Hold (default 10 s, the seed's margin
//     before judging a flow), when it is evicted because MaxOpen
//     connections are open, or at Flush (end of input). Silence of
//     IdleTimeout (3 s) before that is what makes it a timeout (Conn.Silent);
//     Hold only decides how long a late packet may still join it. Resets and
//     FINs do not finish a connection at once: more RSTs (injectors send
//     several) and FINs may follow, and they belong to it. One packet does
//     (EndNewSYN): a client SYN with a new initial sequence number, not
//     older than the connection's latest packet, after one of its RSTs or
//     FINs. The client reuses the ports for a new connection, as conntrack,
//     which the agent samples, sees it: a SYN after a close starts a new
//     conntrack connection, sampled on its own. The SYN opens that
//     connection here too, instead of making the closed one multiple_syn.
//   - After it is finished a connection stays known for Linger (measured from
//     its last packet) as a small tombstone without packets, so that its late
//     packets (retransmissions, packets beyond the cap, server packets) are
//     ignored instead of opening a new connection without a SYN. A SYN with the
//     finished connection's initial sequence number (a retransmission) is
//     ignored too; a SYN with another one opens a new connection.
//
// # Time and order
//
// Time is the packets' own timestamps: the table's clock is the largest
// timestamp seen, so a capture file is classified exactly as a live stream of
// the same packets would be. Packets of a connection are taken in timestamp,
// then sequence-number order (timestamps of some capture paths are coarse),
// then arrival order; among packets of one timestamp the connection's SYN
// comes first, and at one sequence number a packet without PSH, FIN or
// RST comes before data, then FIN, then RST (entry.precedes). A
// connection is finished exactly when a packet
// arrives after at least Hold of silence, whenever the lazy expiry
// gets to it; Conn.Silent tells whether IdleTimeout of silence had passed
// when it was finished.
//
// # Memory
//
// A connection keeps no packets: it keeps a running Summary of them (what
// classification needs), plus the packets with its latest timestamp held
// back (one in the entry; when several share that timestamp, a tie group in
// a pool of reusable blocks), so that packets with equal, coarse timestamps
// are taken in sequence-number order whatever their arrival order, and two
// packets arriving swapped are too. A packet older than the held ones that
// belongs before packets already summarised is taken in arrival order and
// marked (Summary.Reordered, Stats.Reordered): a capture's timestamps
// rarely go backwards, while coarse ones are often equal. Every connection is
// one fixed-size entry (120 bytes) in one array indexed by an
// open-addressing hash table of 32-bit slots, whatever the packet cap; the
// steady state allocates nothing per packet and the garbage collector scans
// no pointers. State is bounded by MaxOpen connections (open and tombstones
// together; tombstones are evicted first, and evicting one loses nothing).
// The array is a reservation of address space for MaxOpen entries (120 MB
// for the default 1 M) outside the Go heap, of which only the pages
// written take memory: a table's memory is its high-water mark. Close
// gives it back; a table that is not closed gives it back once it is
// garbage.
package flow

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Defaults of method.md.
const (
	DefaultPacketCap   = 10
	DefaultIdleTimeout = 3 * time.Second
	DefaultHold        = 10 * time.Second
	DefaultLinger      = 30 * time.Second
	DefaultMaxOpen     = 1 << 20
	// MaxPacketCap is the largest packet cap accepted.
	MaxPacketCap = 64
)

// Config says how connections are assembled. The zero value of a field means
// its default.
type Config struct {
	// PacketCap is N, the number of client packets of a connection that count.
	PacketCap int
	// IdleTimeout is how long a connection must be silent to be judged timed
	// out (method.md section 3).
	IdleTimeout time.Duration
	// Hold is how long an open connection may be silent before it is
	// finished: a packet within Hold of the previous one still belongs to
	// it. At least IdleTimeout; zero means DefaultHold, or IdleTimeout if
	// that is longer.
	Hold time.Duration
	// Linger is how long a finished connection is remembered after its last
	// packet, so that its late packets are ignored. At least Hold; zero
	// means DefaultLinger, or Hold if that is longer.
	Linger time.Duration
	// MaxOpen bounds the number of connections held (open and finished).
	MaxOpen int
}

// Validate fills defaults and checks ranges.
func (c *Config) Validate() error {
	if c.PacketCap == 0 {
		c.PacketCap = DefaultPacketCap
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Hold == 0 {
		c.Hold = max(DefaultHold, c.IdleTimeout)
	}
	if c.Linger == 0 {
		c.Linger = max(DefaultLinger, c.Hold)
	}
	if c.MaxOpen == 0 {
		c.MaxOpen = DefaultMaxOpen
	}
	switch {
	case c.PacketCap < 1 || c.PacketCap > MaxPacketCap:
		return fmt.Errorf("packet cap %d is out of range: it must be between 1 and %d", c.PacketCap, MaxPacketCap)
	case c.IdleTimeout < time.Millisecond:
		return fmt.Errorf("idle timeout %s is too short: it must be at least 1ms (the method uses 3s)", c.IdleTimeout)
	case c.Hold < c.IdleTimeout:
		return fmt.Errorf("hold %s must be at least the idle timeout %s", c.Hold, c.IdleTimeout)
	case c.Linger < c.Hold:
		return fmt.Errorf("linger %s must be at least the hold %s", c.Linger, c.Hold)
	case c.MaxOpen < 2 || c.MaxOpen > MaxMaxOpen:
		return fmt.Errorf("max open connections %d is out of range: it must be between 2 and %d", c.MaxOpen, MaxMaxOpen)
	}
	return nil
}

// Key identifies a connection from the client's side.
type Key struct {
	ClientIP, ServerIP     [16]byte
	ClientPort, ServerPort uint16
	// IPVersion is 4 or 6.
	IPVersion uint8
}

// Client returns the client's address.
func (k *Key) Client() netip.Addr { return addr(k.ClientIP, k.IPVersion) }

// Server returns the server's address.
func (k *Key) Server() netip.Addr { return addr(k.ServerIP, k.IPVersion) }

func (k *Key) reverse() Key {
	return Key{ClientIP: k.ServerIP, ServerIP: k.ClientIP, ClientPort: k.ServerPort, ServerPort: k.ClientPort, IPVersion: k.IPVersion}
}

func addr(ip [16]byte, v uint8) netip.Addr {
	a := netip.AddrFrom16(ip)
	if v == 4 {
		return a.Unmap()
	}
	return a
}

// SYN is what is kept of a connection's client SYN beyond its sequence
// number and IP ID: what scanner attribution needs.
type SYN struct {
	Window     uint16
	NumOptions uint8
	// FirstOption is the kind of the first TCP option (0 when none).
	FirstOption uint8
	DF          bool
}

// RSTAcks describes the ack numbers of a connection's plain RSTs (RST set,
// ACK clear) among its counted packets: what the acknum tags and the
// multiple-RST signatures need. Zero when there is no plain RST.
type RSTAcks struct {
	// First is the ack number of the first plain RST that arrived.
	First uint32
	// AllSame is true when every plain RST has the same ack number.
	AllSame bool
	// AnyZero is true when a plain RST has ack number 0.
	AnyZero bool
}

// End says why a connection was finished.
type End uint8

// Reasons a connection is finished.
const (
	// EndIdle: silent for the hold time.
	EndIdle End = iota + 1
	// EndCap: the packet cap was reached.
	EndCap
	// EndEvicted: evicted to keep the table within MaxOpen.
	EndEvicted
	// EndInput: the input ended (Flush).
	EndInput
	// EndNewSYN: after its RST or FIN, a client SYN with a new initial
	// sequence number reused its ports (and opened a new connection).
	EndNewSYN
)

var endNames = [...]string{"", "idle", "cap", "evicted", "input", "new_syn"}

func (e End) String() string {
	if int(e) < len(endNames) {
		return endNames[e]
	}
	return fmt.Sprintf("End(%d)", e)
}

// Conn is a finished connection as handed to the callback. It is only valid
// during the callback.
type Conn struct {
	Key
	// Summary describes its counted packets in order.
	Summary Summary
	// SYN, SYNIPID and SYNSeq describe the first client SYN that arrived
	// (zero if none; HasSYN tells).
	SYN     SYN
	SYNIPID uint16
	SYNSeq  uint32
	HasSYN  bool
	// Cap is the packet cap in force.
	Cap int
	// Silent is true when, at the time it was finished, no client packet of
	// the connection had arrived for at least the idle timeout.
	Silent bool
	// End says why it was finished.
	End End
}

// Stats counts what the table saw. Packets that were not kept are counted
// by reason; nothing is dropped silently.
type Stats struct {
	// Packets offered to Add.
	Packets uint64 `json:"packets"`
	// Counted packets kept in connections.
	Counted uint64 `json:"counted_packets"`
	// BeyondCap: client packets after the cap, or after the connection was
	// finished (retransmissions, late packets).
	BeyondCap uint64 `json:"ignored_beyond_cap_or_after_end"`
	// Reverse: server-to-client packets of known connections.
	Reverse uint64 `json:"ignored_reverse_direction"`
	// OrphanSYNACK: SYN+ACK packets of no known connection.
	OrphanSYNACK uint64 `json:"ignored_orphan_synack"`
	// Connections opened and finished.
	Opened   uint64 `json:"connections_opened"`
	Finished uint64 `json:"connections_finished"`
	// Evicted open connections (finished early, End == EndEvicted) and
	// evicted tombstones (no loss).
	EvictedOpen      uint64 `json:"evicted_open_connections"`
	EvictedTombstone uint64 `json:"evicted_finished_connections"`
	// Open is the number of open (unfinished) connections now, PeakOpen the
	// most at any time; Held counts tombstones too.
	Open     int `json:"open_connections"`
	PeakOpen int `json:"peak_open_connections"`
	Held     int `json:"held_connections"`
	PeakHeld int `json:"peak_held_connections"`
	// Reordered counts connections with a packet too far out of order to be
	// ordered exactly (see Summary.Reordered).
	Reordered uint64 `json:"reordered_connections"`
}

// ErrBadPacket is returned by Add for a record that cannot be part of a
// connection (unknown IP version).
var ErrBadPacket = errors.New("bad packet record")
