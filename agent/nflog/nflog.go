// Package nflog reads packets that netfilter NFLOG rules log to one
// nfnetlink_log group, in the network namespace of the calling thread.
//
// Open binds the group over a NETLINK_NETFILTER socket and configures the
// kernel's instance in the same request: copy mode "packet" cut at
// Config.CopyRange bytes, batches of up to Config.QueueThreshold packets
// sent at the latest after Config.FlushTimeout, a batch buffer sized for
// them, and per-instance sequence numbers. Read hands each logged packet
// to a callback without allocating, and counts what the kernel could not
// deliver: sequence-number gaps (packets lost) and ENOBUFS (the socket's
// receive buffer overflowed). Reading goes on after either.
//
// What it does not do:
//   - install rules: an iptables NFLOG rule (nftables: log group N)
//     decides which packets reach the group;
//   - decode packets: Packet.Payload is the raw IP packet, for
//     packet.Decode;
//   - enter a network namespace: Open uses the namespace of the calling OS
//     thread, and the socket stays in it for good. To read another
//     namespace, lock the goroutine to its thread, setns(2), Open, and
//     restore the thread's namespace;
//   - send NFULNL_CFG_CMD_PF_BIND or PF_UNBIND. NFLOG rules reach
//     nfnetlink_log without them (the rule names the logger type; verified
//     on 6.18), and they are not harmless: they replace the namespace's
//     default logger of an address family (/proc/net/netfilter/nf_log),
//     which packets logged without a logger of their own use, conntrack's
//     nf_conntrack_log_invalid for one. Open leaves nf_log as it was;
//   - conntrack attributes (NFULNL_CFG_F_CONNTRACK), the global sequence
//     number (NFULNL_CFG_F_SEQ_GLOBAL), hardware headers, uid and gid.
//
// What the kernel does, as this package's tests show on Linux 6.18:
//   - one socket per group per network namespace. A bind of a group that
//     another socket holds is refused with EPERM (EBUSY is only for a
//     second bind from the same socket), the errno a process without
//     CAP_NET_ADMIN gets too; Open tells the two apart with a probe that
//     changes nothing, and returns ErrGroupBusy or ErrPermission with a
//     sentence saying what to do. Closing the socket frees the group;
//   - the bytes copied are the smaller of Config.CopyRange and the rule's
//     --nflog-size; iptables' older --nflog-range is ignored by the kernel;
//   - the per-instance sequence number starts at 0 when the group is bound
//     and numbers every packet the kernel put into a batch, including
//     batches it then could not queue on the socket, so Stats.Packets +
//     Stats.SeqGaps is the number of packets the rules logged;
//   - NFULA_TIMESTAMP (microseconds, wall clock) comes with packets logged
//     in PREROUTING, INPUT and FORWARD, not in OUTPUT or POSTROUTING; there
//     Packet.Timestamp is the time the batch was received.
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// Defaults applied by Open to zero fields of Config.
const (
	DefaultCopyRange      = 128
	DefaultQueueThreshold = 512
	DefaultFlushTimeout   = 100 * time.Millisecond
	DefaultReadBuffer     = 8 << 20
)

// Limits checked by Config.validate.
const (
	// MinCopyRange is the smallest CopyRange Open accepts: an IPv4 header
	// and a TCP header without options.
	MinCopyRange = 40
	// MaxQueueThreshold is the largest QueueThreshold Open accepts.
	MaxQueueThreshold = 1 << 16
	// MaxFlushTimeout is the largest FlushTimeout Open accepts.
	MaxFlushTimeout = time.Hour
)

// Config says which group to bind and how the kernel batches packets.
// Zero fields take the defaults above.
type Config struct {
	// Group is the NFLOG group (iptables --nflog-group), 0 to 65535.
	Group uint16
	// CopyRange is how many bytes of each packet, from the IP header on,
	// the kernel copies: enough for the headers only. Default 128
	// (IPv6 40 + TCP with full options 60 + room for IPv6 extension
	// headers or IPv4 options), minimum MinCopyRange; the kernel caps it
	// at 65531. The rule's own --nflog-size cuts further if it is smaller.
	CopyRange uint16
	// QueueThreshold is the number of packets the kernel gathers into one
	// batch before it sends them (NFULA_CFG_QTHRESH). Default 512: one
	// datagram, one wakeup and one recvfrom for up to 512 packets (fewer
	// when the batch buffer fills first, see nlbufsiz). Each wakeup of the
	// reader costs several context switches (the Go runtime's netpoller
	// and its sysmon thread wake with it), which on a virtual machine are
	// most of the reader's CPU at high rates: batches of 256 took half the
	// CPU per packet of batches of 64 under a SYN flood, and 512 a fifth
	// less again than 256 (0.27-0.29 against 0.35-0.38 µs per packet at
	// 250 k/s). The flush timeout bounds the wait at low rates.
	QueueThreshold uint32
	// FlushTimeout is how long the kernel holds a batch that is not full
	// (NFULA_CFG_TIMEOUT, rounded up to 1/100 s). Default 100 ms. It is
	// the longest time a logged packet waits before Read sees it.
	FlushTimeout time.Duration
	// ReadBuffer is the socket's receive buffer in bytes, set with
	// SO_RCVBUFFORCE (which needs CAP_NET_ADMIN and ignores
	// net.core.rmem_max) or else SO_RCVBUF. Default 8 MiB. When it is full
	// the kernel drops whole batches and Stats counts them.
	ReadBuffer int
}

func (c Config) withDefaults() Config {
	if c.CopyRange == 0 {
		c.CopyRange = DefaultCopyRange
	}
	if c.QueueThreshold == 0 {
		c.QueueThreshold = DefaultQueueThreshold
	}
	if c.FlushTimeout == 0 {
		c.FlushTimeout = DefaultFlushTimeout
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = DefaultReadBuffer
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.CopyRange < MinCopyRange:
		return fmt.Errorf("nflog: copy range %d is below %d bytes, too short for an IP and a TCP header", c.CopyRange, MinCopyRange)
	case c.QueueThreshold > MaxQueueThreshold:
		return fmt.Errorf("nflog: queue threshold %d is above %d packets", c.QueueThreshold, MaxQueueThreshold)
	case c.FlushTimeout < 0:
		return fmt.Errorf("nflog: flush timeout %v is negative", c.FlushTimeout)
	case c.FlushTimeout > MaxFlushTimeout:
		return fmt.Errorf("nflog: flush timeout %v is above %v", c.FlushTimeout, MaxFlushTimeout)
	case c.ReadBuffer < 0:
		return fmt.Errorf("nflog: read buffer %d is negative", c.ReadBuffer)
	}
	return nil
}

// timeoutHundredths is FlushTimeout in the kernel's unit, rounded up.
func (c Config) timeoutHundredths() uint32 {
	const unit = 10 * time.Millisecond
	return uint32((c.FlushTimeout + unit - 1) / unit)
}

// nlbufsiz is the size of the kernel's batch buffer: room for a full
// batch of headers-only packets (about 200 bytes of netlink and attribute
// headers besides the copied bytes), at most nlbufsizBest.
func (c Config) nlbufsiz() uint32 {
	n := uint64(c.QueueThreshold) * (uint64(c.CopyRange) + 256)
	return uint32(min(n, nlbufsizBest))
}

// Errors that Open returns, matched with errors.Is.
var (
	// ErrGroupBusy: another socket in this network namespace has bound
	// the group.
	ErrGroupBusy = errors.New("nflog group already bound")
	// ErrPermission: the process lacks CAP_NET_ADMIN in the network
	// namespace's user namespace.
	ErrPermission = errors.New("nflog needs CAP_NET_ADMIN")
)

// openError is the error Open returns for ErrGroupBusy and ErrPermission:
// a sentence for the user, the sentinel, and the kernel's errno.
type openError struct {
	msg   string
	kind  error
	errno unix.Errno
}

func (e *openError) Error() string        { return e.msg }
func (e *openError) Is(target error) bool { return target == e.kind }
func (e *openError) Unwrap() error        { return e.errno }

// Stats are counters since Open. Packets + SeqGaps is the number of
// packets the kernel logged to the group while this Conn held it.
type Stats struct {
	// Packets is the number of packets read.
	Packets uint64
	// SeqGaps is the number of packets lost, from gaps in the
	// per-instance sequence numbers (NFULA_SEQ): batches the kernel could
	// not queue on the socket because its receive buffer was full. A gap
	// is seen, and counted, only when the next packet of the group is
	// read: the loss of a burst's tail shows with the group's next packet.
	SeqGaps uint64
	// ENOBUFS is the number of times recvmsg reported that the receive
	// buffer had overflowed (one report can stand for many lost batches),
	// counted as soon as the read fails.
	ENOBUFS uint64
	// Errors is the number of malformed, truncated or unexpected messages
	// and netlink error messages seen while reading.
	Errors uint64
}

// Packet is one logged packet. A Packet and the slices it holds are valid
// only during the callback that receives it: copy what must outlive it.
type Packet struct {
	// Timestamp is the time the kernel logged the packet (NFULA_TIMESTAMP,
	// microsecond precision), in nanoseconds since the Unix epoch. When
	// the kernel sent none it is the time the batch was received, and
	// KernelTimestamp is false.
	Timestamp       int64
	KernelTimestamp bool
	// Payload is the packet from its IP header on, cut at the copy range.
	Payload []byte
	// Seq is the per-instance sequence number, from 0 at bind time.
	Seq uint32
	// Family is the netfilter protocol family: unix.NFPROTO_IPV4 (2) or
	// unix.NFPROTO_IPV6 (10).
	Family uint8
	// Hook is the netfilter hook: 0 PREROUTING, 1 INPUT, 2 FORWARD,
	// 3 OUTPUT, 4 POSTROUTING.
	Hook uint8
	// HWProtocol is the packet's EtherType (0x0800, 0x86dd).
	HWProtocol uint16
	// InDev and OutDev are interface indexes, 0 when the hook has none.
	InDev, OutDev uint32
	// Mark is the packet mark, 0 when unset.
	Mark uint32
	// Prefix is the rule's --nflog-prefix, without the trailing NUL.
	Prefix []byte
}

// recvBufSize holds the largest datagram the kernel sends. A batch is
// built in an skb of NFULA_CFG_NLBUFSIZ bytes (at most nlbufsizMax) or,
// for a single large packet, of that packet's size (at most 64 KiB), and
// the kernel fills the skb's whole tailroom, which the allocator may have
// rounded up to the next power of two.
const recvBufSize = 2*nlbufsizMax + 4096

// Conn is a bound NFLOG group. Read runs in one goroutine at a time; Stats
// and Close may be called from any goroutine.
type Conn struct {
	cfg Config
	nl  *netlink.Conn
	rc  syscall.RawConn

	closed atomic.Bool
	readMu sync.Mutex // held by Read and ReadBatch

	// Receive state, owned by the reader.
	buf    []byte
	readFn func(fd uintptr) bool // recvfrom into buf, made once in Open
	rn     int
	rerr   unix.Errno

	parser // sequence tracking and the reused Packet

	packets, seqGaps, enobufs, errs atomic.Uint64

	rcvbuf int // effective receive buffer, as getsockopt reports it
}

// Open binds cfg.Group in the calling thread's network namespace and
// configures it. The caller needs CAP_NET_ADMIN.
func Open(cfg Config) (*Conn, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("nflog: open netlink socket: %w", err)
	}
	c := &Conn{cfg: cfg, nl: nl, buf: make([]byte, recvBufSize)}
	c.parser.seqKnown = true // a new instance numbers its packets from 0
	if err := c.setup(); err != nil {
		_ = nl.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) setup() error {
	rc, err := c.nl.SyscallConn()
	if err != nil {
		return fmt.Errorf("nflog: %w", err)
	}
	c.rc = rc
	// A raw system call: MSG_DONTWAIT never sleeps (an empty socket is
	// EAGAIN, and the poller waits), so the Go scheduler need not be told.
	// Told (unix.Syscall6), it hands the reader's P to another thread
	// when a copy of a full batch outlasts a sysmon tick (20 µs), and
	// wakes sysmon: measured at a SYN flood with one P, 11 % of the
	// agent's CPU under a 2 % CPU limit and 13 % with a whole core.
	c.readFn = func(fd uintptr) bool {
		for {
			n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd,
				uintptr(unsafe.Pointer(&c.buf[0])), uintptr(len(c.buf)),
				unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
			switch errno {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait for the poller
			}
			c.rn, c.rerr = int(n), errno
			return true
		}
	}
	if err := c.nl.SetReadBuffer(c.cfg.ReadBuffer); err != nil {
		return fmt.Errorf("nflog: set receive buffer to %d bytes: %w", c.cfg.ReadBuffer, err)
	}
	_ = rc.Control(func(fd uintptr) {
		c.rcvbuf, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})

	// One request binds and configures, so the instance never runs with
	// the kernel's defaults (whole packets, batches of 100, 1 s).
	mode := make([]byte, 6) // struct nfulnl_msg_config_mode, packed
	binary.BigEndian.PutUint32(mode, uint32(c.cfg.CopyRange))
	mode[4] = nfulnlCopyPacket
	err = c.request(nfulnlMsgConfig, []netfilter.Attribute{
		{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}},
		{Type: nfulaCfgMode, Data: mode},
		{Type: nfulaCfgNlbufsz, Data: netfilter.Uint32Bytes(c.cfg.nlbufsiz())},
		{Type: nfulaCfgQthresh, Data: netfilter.Uint32Bytes(c.cfg.QueueThreshold)},
		{Type: nfulaCfgTimeout, Data: netfilter.Uint32Bytes(c.cfg.timeoutHundredths())},
		{Type: nfulaCfgFlags, Data: netfilter.Uint16Bytes(nfulnlCfgFSeq)},
	})
	if err == nil {
		return nil
	}
	g := c.cfg.Group
	switch {
	case errors.Is(err, unix.EBUSY):
		return c.busy(unix.EBUSY)
	case errors.Is(err, unix.EPERM):
		// The kernel answers EPERM both to a process without
		// CAP_NET_ADMIN and to a bind of a group another socket holds.
		// A message every capable sender gets ENOTSUPP for, and that
		// changes nothing, tells the two apart.
		if perr := c.request(nfulnlMsgPacket, nil); errors.Is(perr, unix.EPERM) {
			return &openError{
				msg:   fmt.Sprintf("nflog group %d: the kernel refused with EPERM: the process needs CAP_NET_ADMIN in this network namespace (run as root or add the NET_ADMIN capability)", g),
				kind:  ErrPermission,
				errno: unix.EPERM,
			}
		}
		return c.busy(unix.EPERM)
	}
	return fmt.Errorf("nflog: bind and configure group %d: %w", g, err)
}

func (c *Conn) busy(errno unix.Errno) error {
	return &openError{
		msg: fmt.Sprintf("nflog group %d is already bound by another socket in this network namespace (kernel answered %s); choose another --nflog-group or stop the other reader",
			c.cfg.Group, unix.ErrnoName(errno)),
		kind:  ErrGroupBusy,
		errno: errno,
	}
}

// request sends one NFNL_SUBSYS_ULOG message for the group and waits for
// the kernel's acknowledgement. Packets that arrive meanwhile (possible
// only in the instant between a bind and its acknowledgement) are counted
// in Stats but not delivered.
func (c *Conn) request(typ netfilter.MessageType, attrs []netfilter.Attribute) error {
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysULOG,
		MessageType: typ,
		Family:      netfilter.ProtoUnspec,
		Version:     unix.NFNETLINK_V0,
		ResourceID:  c.cfg.Group,
		Flags:       netlink.Request | netlink.Acknowledge,
	}, attrs)
	if err != nil {
		return err
	}
	sent, err := c.nl.Send(m)
	if err != nil {
		return err
	}
	if err := c.nl.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	defer c.nl.SetReadDeadline(time.Time{})
	for {
		if err := c.rc.Read(c.readFn); err != nil {
			return fmt.Errorf("wait for the kernel's answer: %w", err)
		}
		switch {
		case c.rerr == unix.ENOBUFS:
			c.enobufs.Add(1)
			continue
		case c.rerr != 0:
			return c.rerr
		}
		if errno, ok := c.handle(c.buf[:min(c.rn, len(c.buf))], func(*Packet) {}, sent.Header.Sequence); ok {
			if errno != 0 {
				return errno
			}
			return nil
		}
	}
}

// Stats returns the counters since Open.
func (c *Conn) Stats() Stats {
	return Stats{
		Packets: c.packets.Load(),
		SeqGaps: c.seqGaps.Load(),
		ENOBUFS: c.enobufs.Load(),
		Errors:  c.errs.Load(),
	}
}

// ReadBufferSize returns the receive buffer the kernel granted, as
// getsockopt(SO_RCVBUF) reports it (twice the requested size, or less
// when SO_RCVBUFFORCE was refused and net.core.rmem_max applied).
func (c *Conn) ReadBufferSize() int { return c.rcvbuf }

// SetReadDeadline makes a Read or ReadBatch waiting for the kernel after t
// return an error that wraps os.ErrDeadlineExceeded, so that a reader can
// drain what the socket holds and then stop (a zero t: no deadline).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nl.SetReadDeadline(t) }

// Close unbinds the group and closes the socket. A Read blocked in
// another goroutine returns net.ErrClosed. Close is idempotent.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	// Unbind without waiting for an answer (the reader would consume it);
	// the kernel acts on the message before sendmsg returns. Closing the
	// socket would release the group anyway.
	if m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysULOG,
		MessageType: nfulnlMsgConfig,
		Family:      netfilter.ProtoUnspec,
		Version:     unix.NFNETLINK_V0,
		ResourceID:  c.cfg.Group,
		Flags:       netlink.Request,
	}, []netfilter.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdUnbind}}}); err == nil {
		_, _ = c.nl.Send(m)
	}
	// Wake a reader parked in the poller at once, then close.
	_ = c.nl.SetReadDeadline(time.Unix(1, 0))
	if err := c.nl.Close(); err != nil {
		return fmt.Errorf("nflog: close group %d: %w", c.cfg.Group, err)
	}
	return nil
}
