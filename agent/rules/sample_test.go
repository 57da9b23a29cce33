package rules

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
)

// TestSampledConnectionsAreLabelledOnceAndLoggedNTimes drives real TCP
// connections through the rules on the namespace's loopback, at
// probability 1, and reads the rules' counters (iptables -L -v -x) and,
// with tcpdump at hand, what the NFLOG group received.
func TestSampledConnectionsAreLabelledOnceAndLoggedNTimes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		const (
			packetCap = 3
			group     = 77
			copyRange = 128
			sampled4  = 3 // connections 127.0.0.1 -> sampled port
			sampled6  = 2 // connections ::1 -> sampled port
		)

		// Servers first: the policy names their port.
		ln4 := ns.Listen(t, "tcp4", "127.0.0.1:0", echo)
		ln4other := ns.Listen(t, "tcp4", "127.0.0.1:0", echo)
		ln6 := ns.Listen(t, "tcp6", fmt.Sprintf("[::1]:%d", ln4.Addr().(*net.TCPAddr).Port), echo)
		port := uint16(ln4.Addr().(*net.TCPAddr).Port)

		p := Policy{
			Name:         "functional",
			Probability:  1,
			PacketCap:    packetCap,
			LabelBit:     9,
			NFLOGGroup:   group,
			CopyRange:    copyRange,
			Ports:        []uint16{port},
			ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
			Interfaces:   []string{"lo"},
			Families:     []Family{IPv4, IPv6},
		}
		m := ns.manager(p, b)
		mustEnsure(t, m)

		var capture *netnstest.Proc
		pcap := filepath.Join(t.TempDir(), "nflog.pcap")
		if _, err := exec.LookPath("tcpdump"); err == nil {
			capture = ns.Start(t, t.TempDir(), "tcpdump", "tcpdump", "-U", "-n", "-i", fmt.Sprintf("nflog:%d", group), "-w", pcap)
			capture.WaitOutput(t, "listening on", 10*time.Second)
		} else {
			t.Log("tcpdump not found: checking the rules' counters only")
		}

		talk := func(network, from, to string) {
			t.Helper()
			var c net.Conn
			if err := ns.Do(func() (err error) {
				d := net.Dialer{Timeout: 5 * time.Second}
				if from != "" {
					d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
				}
				c, err = d.Dial(network, to)
				return err
			}); err != nil {
				t.Fatalf("dial %s: %v", to, err)
			}
			defer c.Close()
			if err := exchange(c, 5, 200); err != nil {
				t.Fatalf("talk to %s: %v", to, err)
			}
		}
		for range sampled4 {
			talk("tcp4", "", ln4.Addr().String())
		}
		talk("tcp4", "127.0.0.2", ln4.Addr().String()) // excluded client
		talk("tcp4", "", ln4other.Addr().String())     // port not in the policy
		for range sampled6 {
			talk("tcp6", "", ln6.Addr().String())
		}

		// Counters: the label rule once per sampled connection, the
		// NFLOG rule exactly packetCap times per sampled connection.
		for _, tc := range []struct {
			f     Family
			conns int
		}{{IPv4, sampled4}, {IPv6, sampled6}} {
			c := ruleCounters(t, ns, b, tc.f, m.Chain())
			if c.label != tc.conns {
				t.Errorf("%s: label rule matched %d packets, want %d (one SYN per sampled connection)", tc.f, c.label, tc.conns)
			}
			if c.log != tc.conns*packetCap {
				t.Errorf("%s: NFLOG rule matched %d packets, want %d (%d per connection)", tc.f, c.log, tc.conns*packetCap, packetCap)
			}
			if tc.f == IPv4 && c.excluded == 0 {
				t.Errorf("IPv4: the exclusion of 127.0.0.2 matched nothing")
			}
		}

		if capture == nil {
			return
		}
		// The kernel sends an NFLOG batch when it holds the queue threshold
		// (default 100 packets; tcpdump sets none) or after the flush
		// timeout (default 1 s).
		time.Sleep(1500 * time.Millisecond)
		if err := capture.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		pkts, err := readNFLOGPcap(pcap)
		if err != nil {
			t.Fatal(err)
		}
		want := (sampled4 + sampled6) * packetCap
		if len(pkts) != want {
			t.Errorf("group %d received %d packets, want %d", group, len(pkts), want)
		}
		truncated := 0
		for _, pk := range pkts {
			if pk.group != group {
				t.Errorf("packet logged to group %d", pk.group)
			}
			if pk.dstPort != port {
				t.Errorf("logged a packet to port %d (from %s): only client packets to %d should be", pk.dstPort, pk.src, port)
			}
			if pk.src == netip.MustParseAddr("127.0.0.2") {
				t.Errorf("logged a packet of the excluded client")
			}
			if pk.captured > copyRange {
				t.Errorf("NFLOG copied %d bytes, more than --nflog-size %d", pk.captured, copyRange)
			}
			if pk.ipLen > copyRange && pk.captured == copyRange {
				truncated++
			}
		}
		// The third client packet of each connection carries 200 bytes.
		if truncated != sampled4+sampled6 {
			t.Errorf("%d packets cut at %d bytes, want %d", truncated, copyRange, sampled4+sampled6)
		}
	})
}

// echo sends back what the peer sends.
func echo(c net.Conn) { _, _ = io.Copy(c, c) }

// exchange writes n messages of size bytes and reads each echo back, so
// each message is a segment of its own.
func exchange(c net.Conn, n, size int) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := make([]byte, size)
	back := make([]byte, size)
	for range n {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return err
		}
	}
	return nil
}

type chainCounters struct{ excluded, label, log int }

// ruleCounters reads the packet counters of the policy chain's rules with
// iptables -t mangle -L <chain> -v -x -n.
func ruleCounters(t *testing.T, ns *testNS, b Backend, f Family, chain string) chainCounters {
	t.Helper()
	out := ns.ipt(b, f, "-t", "mangle", "-L", chain, "-v", "-x", "-n")
	var c chainCounters
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, err := strconv.Atoi(fields[0])
		if err != nil {
			continue // a header
		}
		switch l := sc.Text(); {
		case strings.Contains(l, "RETURN"):
			c.excluded += n
		case strings.Contains(l, "NFLOG"):
			c.log += n
		case strings.Contains(l, " set"):
			c.label += n
		}
	}
	t.Logf("%s %s counters: %+v\n%s", b, f, c, out)
	return c
}

// nflogPacket is what the test needs of one packet in an NFLOG capture.
type nflogPacket struct {
	group    uint16
	src      netip.Addr
	dstPort  uint16
	ipLen    int // the packet's length from its IP header
	captured int // the bytes NFLOG copied
}

// readNFLOGPcap reads a classic pcap file of link type NFLOG (239), as
// tcpdump -w writes it.
func readNFLOGPcap(path string) ([]nflogPacket, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 24 {
		return nil, errors.New("pcap: short file")
	}
	var order binary.ByteOrder = binary.LittleEndian
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4, 0xa1b23c4d:
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return nil, errors.New("pcap: not a classic pcap file")
	}
	if lt := order.Uint32(data[20:]); lt != 239 {
		return nil, fmt.Errorf("pcap: link type %d, want NFLOG (239)", lt)
	}
	var out []nflogPacket
	for off := 24; off+16 <= len(data); {
		incl := int(order.Uint32(data[off+8:]))
		off += 16
		if off+incl > len(data) {
			return nil, errors.New("pcap: truncated record")
		}
		rec := data[off : off+incl]
		off += incl
		p, err := parseNFLOG(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// parseNFLOG reads the NFLOG pseudo-header: family, version, group, then
// TLVs in host byte order; type 9 (NFULA_PAYLOAD) is the packet.
func parseNFLOG(rec []byte) (nflogPacket, error) {
	if len(rec) < 4 {
		return nflogPacket{}, errors.New("nflog: short record")
	}
	p := nflogPacket{group: binary.BigEndian.Uint16(rec[2:])}
	for off := 4; off+4 <= len(rec); {
		l := int(binary.LittleEndian.Uint16(rec[off:]))
		typ := binary.LittleEndian.Uint16(rec[off+2:])
		if l < 4 || off+l > len(rec) {
			return p, fmt.Errorf("nflog: bad TLV length %d", l)
		}
		if typ == 9 {
			return p, p.parseIP(rec[off+4 : off+l])
		}
		off += (l + 3) &^ 3
	}
	return p, errors.New("nflog: no payload")
}

func (p *nflogPacket) parseIP(b []byte) error {
	p.captured = len(b)
	if len(b) < 1 {
		return errors.New("ip: empty")
	}
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0xf) * 4
		if len(b) < ihl+4 || b[9] != 6 {
			return errors.New("ip: not TCP over IPv4")
		}
		p.ipLen = int(binary.BigEndian.Uint16(b[2:]))
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.dstPort = binary.BigEndian.Uint16(b[ihl+2:])
	case 6:
		if len(b) < 44 || b[6] != 6 {
			return errors.New("ip: not TCP over IPv6")
		}
		p.ipLen = 40 + int(binary.BigEndian.Uint16(b[4:]))
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.dstPort = binary.BigEndian.Uint16(b[42:])
	default:
		return fmt.Errorf("ip: version %d", b[0]>>4)
	}
	return nil
}

// TestOnlyTheFirstPacketsOfAConnectionEnterTheChain checks what keeps the
// rules cheap for bulk traffic: the jump from PREROUTING is taken only
// while a connection has sent at most PacketCap packets in the original
// direction, so a long connection's later packets never traverse the
// policy chain, and the chain still labels the connection and logs
// exactly its first PacketCap client packets.
func TestOnlyTheFirstPacketsOfAConnectionEnterTheChain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		const (
			packetCap = 4
			exchanges = 60
		)
		ln := ns.Listen(t, "tcp4", "127.0.0.1:0", echo)
		p := Policy{
			Name:        "bulk",
			Probability: 1,
			PacketCap:   packetCap,
			LabelBit:    11,
			NFLOGGroup:  78,
			CopyRange:   128,
			Families:    []Family{IPv4},
		}
		m := ns.manager(p, b)
		mustEnsure(t, m)
		// A rule of the test's own after the jump (which returns) counts
		// every TCP packet: nft keeps no base-chain policy counter.
		ns.ipt(b, IPv4, "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "comment", "--comment", "test: every TCP packet")

		var c net.Conn
		if err := ns.Do(func() (err error) {
			c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := exchange(c, exchanges, 100); err != nil {
			t.Fatal(err)
		}
		c.Close()

		cc := ruleCounters(t, ns, b, IPv4, m.Chain())
		if cc.label != 1 || cc.log != packetCap {
			t.Errorf("label rule matched %d packets, NFLOG rule %d: want 1 and %d", cc.label, cc.log, packetCap)
		}
		// The counting rule sees every packet, the jump's counter those
		// that entered the chain. On
		// loopback both directions pass PREROUTING: the jump takes the
		// client's first packetCap packets and the server's packets sent
		// meanwhile, at most as many again.
		out := ns.ipt(b, IPv4, "-t", "mangle", "-L", "PREROUTING", "-v", "-x", "-n")
		var jumped, total int
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			switch {
			case strings.Contains(l, "test: every TCP packet") && len(f) > 0:
				total, _ = strconv.Atoi(f[0])
			case len(f) >= 3 && f[2] == m.Chain():
				jumped, _ = strconv.Atoi(f[0])
			}
		}
		t.Logf("PREROUTING:\n%s", out)
		if total < 2*exchanges {
			t.Fatalf("PREROUTING saw %d packets, fewer than the %d segments sent: the counters are not what the test expects", total, 2*exchanges)
		}
		if jumped < packetCap || jumped > 2*packetCap {
			t.Errorf("%d of %d packets jumped to the policy chain, want %d to %d (the first packets of the connection only)", jumped, total, packetCap, 2*packetCap)
		}
	})
}
