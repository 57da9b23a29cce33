// Command synflood is the load generator of the agent's capture benchmark
// (hack/bench/agent-capture.sh): it sends TCP SYNs to one IPv4 address at a
// fixed rate, or as fast as it can, each from the next source port, so
// that every SYN opens a new connection in the receiver's conntrack table
// (the receiver answers each with a RST, which closes it; a port used again
// later opens a new connection).
//
//	synflood -iface IF -dst-mac MAC -src A -dst B [-dport P] [-rate PPS] [-duration D]
//
// It writes whole Ethernet frames with an AF_PACKET socket bound to IF,
// bypassing the qdisc, in batches of up to 64 frames per sendmmsg(2), with
// valid IP and TCP checksums (conntrack checks them) and an MSS option, as
// an operating system's SYN carries. With -rate 0 it sends as fast as the
// core it runs on allows (a flood); otherwise the batches are paced so that
// packet n leaves at start + n/rate, and batches are small enough (about
// 0.5 ms of traffic each) that the load is smooth at every rate.
//
// A frame the interface refuses (a veth whose peer's backlog is full
// answers ENOBUFS) is counted as refused, not sent: "sent" is what the
// interface accepted. At the end it prints one JSON line to stdout:
//
//	{"sent":N,"refused":N,"seconds":S,"rate":R,"target_rate":T}
//
// It sends only to -dst, which must be a private (RFC 1918), benchmarking
// (198.18.0.0/15) or documentation address: it is meant for a veth between
// network namespaces that the benchmark made, never for a real network.
// It needs CAP_NET_RAW.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	ethLen   = 14
	ipLen    = 20
	tcpLen   = 24 // 20 bytes and the MSS option
	frameLen = ethLen + ipLen + tcpLen
	maxBatch = 64
)

type result struct {
	Sent       uint64  `json:"sent"`
	Refused    uint64  `json:"refused"`
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"rate"`
	TargetRate float64 `json:"target_rate"`
}

func main() {
	iface := flag.String("iface", "", "interface to send on (a veth of the benchmark's client namespace)")
	dstMAC := flag.String("dst-mac", "", "MAC address of the receiving interface")
	src := flag.String("src", "", "source IPv4 address")
	dst := flag.String("dst", "", "destination IPv4 address (private or 198.18.0.0/15 only)")
	dport := flag.Uint("dport", 80, "destination TCP port")
	sportMin := flag.Uint("sport-min", 1024, "first source port")
	sportMax := flag.Uint("sport-max", 65535, "last source port; ports are used in turn")
	rate := flag.Float64("rate", 0, "packets per second; 0 sends as fast as possible")
	duration := flag.Duration("duration", 3*time.Second, "how long to send")
	count := flag.Uint64("count", 0, "stop after this many packets (0: no limit)")
	flag.Parse()

	if err := run(*iface, *dstMAC, *src, *dst, uint16(*dport), uint16(*sportMin), uint16(*sportMax), *rate, *duration, *count); err != nil {
		fmt.Fprintln(os.Stderr, "synflood:", err)
		os.Exit(1)
	}
}

func run(ifname, dstMAC, srcS, dstS string, dport, sportMin, sportMax uint16, rate float64, dur time.Duration, count uint64) error {
	switch {
	case ifname == "" || dstMAC == "" || srcS == "" || dstS == "":
		return errors.New("-iface, -dst-mac, -src and -dst are required")
	case sportMin == 0 || sportMax < sportMin:
		return fmt.Errorf("source ports %d-%d: need 1 <= -sport-min <= -sport-max", sportMin, sportMax)
	case rate < 0 || dur <= 0:
		return errors.New("-rate must be >= 0 and -duration > 0")
	}
	srcIP, err := netip.ParseAddr(srcS)
	if err != nil || !srcIP.Is4() {
		return fmt.Errorf("-src %q: not an IPv4 address", srcS)
	}
	dstIP, err := netip.ParseAddr(dstS)
	if err != nil || !dstIP.Is4() {
		return fmt.Errorf("-dst %q: not an IPv4 address", dstS)
	}
	if !testAddress(dstIP) {
		return fmt.Errorf("-dst %s: only private (RFC 1918) and benchmarking (198.18.0.0/15) addresses are accepted", dstIP)
	}
	mac, err := net.ParseMAC(dstMAC)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("-dst-mac %q: not an Ethernet address", dstMAC)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	if len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("%s has no Ethernet address", ifname)
	}

	// Protocol 0: the socket only sends, it is delivered no packets.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("AF_PACKET socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("bind to %s: %w", ifname, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		return fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)

	// The frames of one batch, and the mmsghdrs pointing at them.
	frames := make([]byte, maxBatch*frameLen)
	iovs := make([]unix.Iovec, maxBatch)
	msgs := make([]mmsghdr, maxBatch)
	for i := range maxBatch {
		f := frames[i*frameLen : (i+1)*frameLen]
		template(f, mac, ifi.HardwareAddr, srcIP.As4(), dstIP.As4(), dport)
		iovs[i].Base = &f[0]
		iovs[i].SetLen(frameLen)
		msgs[i].hdr.Iov = &iovs[i]
		msgs[i].hdr.SetIovlen(1)
	}

	batch := maxBatch
	if rate > 0 {
		batch = max(1, min(maxBatch, int(rate/2000))) // about 0.5 ms of traffic
	}
	var res result
	res.TargetRate = rate
	sport := sportMin
	var ipid uint16
	seq := uint32(0x1e3779b9)
	start := time.Now()
	deadline := start.Add(dur)
	for {
		now := time.Now()
		if !now.Before(deadline) || (count > 0 && res.Sent+res.Refused >= count) {
			break
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(res.Sent+res.Refused) * float64(time.Second) / rate))
			if due.After(deadline) {
				time.Sleep(deadline.Sub(now))
				break
			}
			if d := due.Sub(now); d > 0 {
				time.Sleep(d)
			}
		}
		n := batch
		if count > 0 {
			n = int(min(uint64(n), count-res.Sent-res.Refused))
		}
		for i := range n {
			f := frames[i*frameLen : (i+1)*frameLen]
			stamp(f, sport, ipid, seq)
			if sport == sportMax {
				sport = sportMin
			} else {
				sport++
			}
			ipid++
			seq += 0x9e3779b9
		}
		for off := 0; off < n; {
			sent, err := sendmmsg(fd, msgs[off:n])
			switch {
			case err == nil:
				res.Sent += uint64(sent)
				off += sent
			case errors.Is(err, unix.ENOBUFS):
				res.Refused++ // the frame at off was dropped
				off++
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			default:
				return fmt.Errorf("sendmmsg on %s: %w", ifname, err)
			}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.Rate = float64(res.Sent) / res.Seconds
	return json.NewEncoder(os.Stdout).Encode(res)
}

// testAddress reports whether a is an address a benchmark may send to.
func testAddress(a netip.Addr) bool {
	return a.IsPrivate() || netip.MustParsePrefix("198.18.0.0/15").Contains(a)
}

// mmsghdr is struct mmsghdr; Go pads it as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

func sendmmsg(fd int, msgs []mmsghdr) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// template writes the fields every frame shares: Ethernet, IPv4 (DF, TTL
// 64), TCP SYN with window 64240 and MSS 1460.
func template(f []byte, dst, src net.HardwareAddr, sip, dip [4]byte, dport uint16) {
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_IP)
	ip := f[ethLen : ethLen+ipLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], ipLen+tcpLen)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	copy(ip[12:16], sip[:])
	copy(ip[16:20], dip[:])
	tcp := f[ethLen+ipLen:]
	binary.BigEndian.PutUint16(tcp[2:4], dport)
	tcp[12] = (tcpLen / 4) << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:16], 64240)
	copy(tcp[20:24], []byte{2, 4, 0x05, 0xb4}) // MSS 1460
}

// stamp sets what changes from frame to frame and the checksums.
func stamp(f []byte, sport, ipid uint16, seq uint32) {
	ip := f[ethLen : ethLen+ipLen]
	binary.BigEndian.PutUint16(ip[4:6], ipid)
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:12], ^fold(sum(ip, 0)))
	tcp := f[ethLen+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:2], sport)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	tcp[16], tcp[17] = 0, 0
	pseudo := sum(ip[12:20], uint32(unix.IPPROTO_TCP)+uint32(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:18], ^fold(sum(tcp, pseudo)))
}

// sum adds b as big-endian 16-bit words to s (the Internet checksum
// before folding); len(b) is even here.
func sum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	return s
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
