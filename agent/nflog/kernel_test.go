package nflog

// Tests against the real kernel. They need root; see needRoot.

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/packet"
	"golang.org/x/sys/unix"
)

// addRule appends an NFLOG rule for TCP to mangle PREROUTING inside the
// namespace, with iptables or ip6tables.
func (ns *netns) addRule(tb testing.TB, ipt string, target ...string) {
	tb.Helper()
	ns.Must(tb, append([]string{ipt, "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-j", "NFLOG"}, target...)...)
}

// pattern is the data the tests' clients send: recognisable bytes, so a
// test can check that a copied payload is the start of what was sent.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// tcpPayload returns the TCP payload bytes held in a copied packet.
func tcpPayload(l *logged) []byte {
	ip := l.Payload
	var off int
	if l.rec.IPVersion == 4 {
		off = int(ip[0]&0x0f) * 4
	} else {
		off = 40
	}
	off += int(ip[off+12]>>4) * 4
	return ip[off:]
}

func TestReadDeliversTCPHeaders(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name, ipt, network, addr string
		family                   uint8
		hwProto                  uint16
	}{
		{"IPv4", "iptables", "tcp4", "127.0.0.1:0", unix.NFPROTO_IPV4, 0x0800},
		{"IPv6", "ip6tables", "tcp6", "[::1]:0", unix.NFPROTO_IPV6, 0x86dd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t)
			ns.addRule(t, tc.ipt, "--nflog-group", "5", "--nflog-size", "128", "--nflog-prefix", "cs-test")
			nfLogBefore := ns.Must(t, "cat", "/proc/net/netfilter/nf_log")

			start := time.Now()
			c := ns.open(t, Config{Group: 5, FlushTimeout: 10 * time.Millisecond})
			r := startReader(t, c)
			if after := ns.Must(t, "cat", "/proc/net/netfilter/nf_log"); after != nfLogBefore {
				t.Errorf("Open changed the namespace's loggers:\nbefore:\n%s\nafter:\n%s", nfLogBefore, after)
			}

			ln := ns.listen(t, tc.network, tc.addr)
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			conn := ns.dial(t, tc.network, ln.Addr().String())
			data := pattern(1000)
			if _, err := conn.Write(data); err != nil {
				t.Fatal(err)
			}
			isData := func(l *logged) bool { return l.rec.DstPort == port && l.rec.PayloadLen > 0 }
			pkts := r.waitFor(t, "the SYN, the SYN-ACK and the data segment", func(p []logged) bool {
				return find(p, isData) != nil
			})
			end := time.Now()

			syn := find(pkts, func(l *logged) bool { return l.rec.DstPort == port && l.rec.Flags == packet.SYN })
			synAck := find(pkts, func(l *logged) bool { return l.rec.SrcPort == port && l.rec.Flags == packet.SYN|packet.ACK })
			seg := find(pkts, isData)
			if syn == nil || synAck == nil {
				t.Fatalf("no SYN or SYN-ACK among %d packets", len(pkts))
			}
			if syn.rec.Src() != syn.rec.Dst() || !syn.rec.Src().IsLoopback() {
				t.Errorf("SYN %v: want loopback to loopback", &syn.rec)
			}
			if syn.rec.SrcPort != synAck.rec.DstPort || synAck.rec.Ack != syn.rec.Seq+1 {
				t.Errorf("SYN-ACK %v does not answer SYN %v", &synAck.rec, &syn.rec)
			}
			if k := syn.rec.OptionKinds(); len(k) == 0 || k[0] != 2 {
				t.Errorf("SYN options %v: want MSS (kind 2) first", k)
			}
			// The segment is cut at the copy range; PayloadLen still says
			// what was on the wire, and the bytes kept are the data's start.
			if len(seg.Payload) != 128 || seg.rec.PayloadLen != 1000 {
				t.Errorf("data segment: %d bytes copied, PayloadLen %d; want 128 and 1000", len(seg.Payload), seg.rec.PayloadLen)
			}
			if got := tcpPayload(seg); !bytes.Equal(got, data[:len(got)]) {
				t.Errorf("copied payload %q is not the start of the data sent", got)
			}

			for i, l := range pkts {
				if l.decErr != nil {
					t.Errorf("packet %d: decode: %v", i, l.decErr)
				}
				if len(l.Payload) > 128 {
					t.Errorf("packet %d: %d bytes copied, beyond the copy range 128", i, len(l.Payload))
				}
				if l.Seq != uint32(i) {
					t.Errorf("packet %d: sequence number %d, want %d", i, l.Seq, i)
				}
				if string(l.Prefix) != "cs-test" || l.Hook != 0 || l.Family != tc.family || l.HWProtocol != tc.hwProto || l.InDev != 1 || l.OutDev != 0 {
					t.Errorf("packet %d: prefix %q hook %d family %d hw_protocol %#x indev %d outdev %d; want cs-test, 0 (PREROUTING), %d, %#x, 1 (lo), 0",
						i, l.Prefix, l.Hook, l.Family, l.HWProtocol, l.InDev, l.OutDev, tc.family, tc.hwProto)
				}
				if !l.KernelTimestamp {
					t.Errorf("packet %d: no NFULA_TIMESTAMP", i)
				}
				// Microsecond precision: allow for the truncation.
				if l.Timestamp < start.UnixNano()-1000 || l.Timestamp > end.UnixNano() {
					t.Errorf("packet %d: timestamp %v outside the test's run [%v, %v]", i, time.Unix(0, l.Timestamp), start, end)
				}
			}
			if s := c.Stats(); s.Packets < uint64(len(pkts)) || s.SeqGaps != 0 || s.ENOBUFS != 0 || s.Errors != 0 {
				t.Errorf("stats %+v: want %d+ packets and no losses or errors", s, len(pkts))
			}
		})
	}
}

func TestTimestampIsTheReceiveTimeWhenTheKernelSendsNone(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	// In OUTPUT (and POSTROUTING) the kernel sends no NFULA_TIMESTAMP.
	ns.Must(t, "iptables", "-w", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "-j", "NFLOG", "--nflog-group", "8", "--nflog-size", "128")
	start := time.Now()
	c := ns.open(t, Config{Group: 8, FlushTimeout: 10 * time.Millisecond})
	r := startReader(t, c)
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	ns.dial(t, "tcp4", ln.Addr().String())
	pkts := r.waitFor(t, "the handshake", func(p []logged) bool { return len(p) >= 3 })
	end := time.Now()
	for i, l := range pkts {
		if l.Hook != 3 || l.OutDev != 1 || l.InDev != 0 || l.decErr != nil {
			t.Errorf("packet %d: hook %d outdev %d indev %d decode %v; want 3 (OUTPUT), 1 (lo), 0, nil", i, l.Hook, l.OutDev, l.InDev, l.decErr)
		}
		if l.KernelTimestamp || l.Timestamp < start.UnixNano() || l.Timestamp > end.UnixNano() {
			t.Errorf("packet %d: timestamp %v (from the kernel: %v), want the receive time within [%v, %v]",
				i, time.Unix(0, l.Timestamp), l.KernelTimestamp, start, end)
		}
	}
}

// instanceLine returns the group's line of /proc/net/netfilter/nfnetlink_log
// in the namespace as fields: group, portid, qlen, copy_mode, copy_range,
// flushtimeout, use count. It returns nil if the group is not bound.
func (ns *netns) instanceLine(tb testing.TB, group uint16) []string {
	tb.Helper()
	for _, line := range strings.Split(ns.Must(tb, "cat", "/proc/net/netfilter/nfnetlink_log"), "\n") {
		f := strings.Fields(line)
		if len(f) == 7 && f[0] == strconv.Itoa(int(group)) {
			return f
		}
	}
	return nil
}

func TestOpenConfiguresKernelInstance(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name                string
		cfg                 Config
		copyRange, hundreds string
	}{
		{"defaults", Config{Group: 3}, "128", "10"},
		{"custom", Config{Group: 4, CopyRange: 96, FlushTimeout: 1500 * time.Millisecond}, "96", "150"},
		{"timeout rounds up", Config{Group: 0, FlushTimeout: time.Millisecond}, "128", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t)
			c := ns.open(t, tc.cfg)
			f := ns.instanceLine(t, tc.cfg.Group)
			if f == nil {
				t.Fatalf("group %d not in /proc/net/netfilter/nfnetlink_log after Open", tc.cfg.Group)
			}
			if f[1] != strconv.Itoa(int(c.nl.PID())) || f[3] != "2" || f[4] != tc.copyRange || f[5] != tc.hundreds {
				t.Errorf("instance %v: want portid %d, copy mode 2 (packet), copy range %s, flush timeout %s",
					f, c.nl.PID(), tc.copyRange, tc.hundreds)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if f := ns.instanceLine(t, tc.cfg.Group); f != nil {
				t.Errorf("group still bound after Close: %v", f)
			}
		})
	}
}

func TestCopyRangeIsTheSmallerOfConfigAndRule(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name      string
		copyRange uint16
		rule      []string
		want      int
	}{
		{"config below rule", 96, []string{"--nflog-size", "128"}, 96},
		{"rule below config", 128, []string{"--nflog-size", "64"}, 64},
		{"rule without size", 200, nil, 200},
		{"nflog-range is ignored by the kernel", 200, []string{"--nflog-range", "64"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t)
			ns.addRule(t, "iptables", append([]string{"--nflog-group", "2"}, tc.rule...)...)
			c := ns.open(t, Config{Group: 2, CopyRange: tc.copyRange, FlushTimeout: 10 * time.Millisecond})
			r := startReader(t, c)
			ln := ns.listen(t, "tcp4", "127.0.0.1:0")
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			if _, err := ns.dial(t, "tcp4", ln.Addr().String()).Write(pattern(1000)); err != nil {
				t.Fatal(err)
			}
			isData := func(l *logged) bool { return l.rec.DstPort == port && l.rec.PayloadLen == 1000 }
			pkts := r.waitFor(t, "the data segment", func(p []logged) bool { return find(p, isData) != nil })
			if got := len(find(pkts, isData).Payload); got != tc.want {
				t.Errorf("copied %d bytes of a 1052-byte packet, want %d", got, tc.want)
			}
		})
	}
}

func TestOpenOfABoundGroupFailsWithAClearError(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	first := ns.open(t, Config{Group: 9})

	_, err := ns.tryOpen(Config{Group: 9})
	if !errors.Is(err, ErrGroupBusy) {
		t.Fatalf("second Open: %v, want ErrGroupBusy", err)
	}
	const want = "nflog group 9 is already bound by another socket in this network namespace (kernel answered EPERM); choose another --nflog-group or stop the other reader"
	if err.Error() != want {
		t.Errorf("second Open:\n got %q\nwant %q", err, want)
	}
	if errors.Is(err, ErrPermission) || !errors.Is(err, unix.EPERM) {
		t.Errorf("second Open: %v matches ErrPermission or not EPERM", err)
	}

	// Groups are per namespace: the same group is free in another one.
	other := newNetns(t)
	other.open(t, Config{Group: 9})

	// Close releases the group at once.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	ns.open(t, Config{Group: 9})
}

func TestOpenWithoutNetAdminSaysSo(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	var openErr error
	err := ns.Do(func() error {
		// Capabilities are per thread: drop CAP_NET_ADMIN from this
		// (locked) thread's effective set only, and restore it after.
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		if err := unix.Capget(&hdr, &caps[0]); err != nil {
			return err
		}
		saved := caps
		caps[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &caps[0]); err != nil {
			return err
		}
		var c *Conn
		c, openErr = Open(Config{Group: 1})
		if c != nil {
			c.Close()
		}
		return unix.Capset(&hdr, &saved[0])
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(openErr, ErrPermission) || !errors.Is(openErr, unix.EPERM) || errors.Is(openErr, ErrGroupBusy) {
		t.Fatalf("Open without CAP_NET_ADMIN: %v, want ErrPermission", openErr)
	}
	if !strings.Contains(openErr.Error(), "needs CAP_NET_ADMIN") {
		t.Errorf("error %q does not say that CAP_NET_ADMIN is needed", openErr)
	}
	if f := ns.instanceLine(t, 1); f != nil {
		t.Errorf("group 1 bound after a refused Open: %v", f)
	}
}

func TestOverflowIsCountedAndReadingGoesOn(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	ns.addRule(t, "iptables", "--nflog-group", "6", "--nflog-size", "128")
	// The smallest receive buffer the kernel grants holds about one batch.
	c := ns.open(t, Config{Group: 6, ReadBuffer: 1, QueueThreshold: 8, FlushTimeout: 10 * time.Millisecond})
	t.Logf("receive buffer granted: %d bytes", c.ReadBufferSize())

	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	conn := ns.dial(t, "tcp4", ln.Addr().String())
	if err := conn.SetNoDelay(true); err != nil {
		t.Fatal(err)
	}
	// Flood while nobody reads: one segment per write.
	for i := 0; i < 2000; i++ {
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // let the last batch flush

	r := startReader(t, c)
	// Traffic after the overflow still arrives.
	ln2 := ns.listen(t, "tcp4", "127.0.0.1:0")
	port2 := uint16(ln2.Addr().(*net.TCPAddr).Port)
	ns.dial(t, "tcp4", ln2.Addr().String())
	pkts := r.waitFor(t, "a SYN sent after the overflow", func(p []logged) bool {
		return find(p, func(l *logged) bool { return l.rec.DstPort == port2 && l.rec.Flags == packet.SYN }) != nil
	})

	s := c.Stats()
	t.Logf("stats after the flood: %+v", s)
	if s.ENOBUFS == 0 || s.SeqGaps == 0 {
		t.Errorf("stats %+v: want ENOBUFS and sequence gaps counted", s)
	}
	// Every packet the kernel numbered was either read or counted lost.
	// (Stats may already include packets read after the copy was taken.)
	last := pkts[len(pkts)-1].Seq
	if s.Packets+s.SeqGaps < uint64(last)+1 {
		t.Errorf("packets %d + gaps %d < %d packets numbered by the kernel", s.Packets, s.SeqGaps, last+1)
	}
	r.stop(t)
	s = c.Stats()
	n, last := len(r.pkts), r.pkts[len(r.pkts)-1].Seq
	if s.Packets != uint64(n) || s.Packets+s.SeqGaps != uint64(last)+1 {
		t.Errorf("read %d packets, last sequence number %d, stats %+v: want packets + gaps = last + 1", n, last, s)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	c := ns.open(t, Config{Group: 11})
	done := make(chan error, 1)
	go func() { done <- c.Read(func(*Packet) {}) }()
	time.Sleep(50 * time.Millisecond) // let Read block in the poller

	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
		t.Logf("Read returned %v after Close", time.Since(start))
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked 2 s after Close")
	}
	if _, err := c.ReadBatch(func(*Packet) {}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch on a closed Conn: %v, want net.ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if f := ns.instanceLine(t, 11); f != nil {
		t.Errorf("group still bound after Close: %v", f)
	}
}

func TestConcurrentReadIsRefused(t *testing.T) {
	needRoot(t)
	ns := newNetns(t)
	c := ns.open(t, Config{Group: 12})
	startReader(t, c)
	time.Sleep(50 * time.Millisecond)
	if _, err := c.ReadBatch(func(*Packet) {}); !errors.Is(err, errConcurrentRead) {
		t.Errorf("second reader: %v, want errConcurrentRead", err)
	}
}

// BenchmarkRead measures how fast Read drains packets the kernel has
// already queued: recvmsg, parsing and the callback, per packet. Packets
// are UDP datagrams of 200 bytes logged headers-only (128 bytes), the
// shape of the agent's traffic; they are sent while the timer is stopped.
func BenchmarkRead(b *testing.B) {
	needRoot(b)
	ns := newNetns(b)
	ns.Must(b, "iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "NFLOG", "--nflog-group", "1", "--nflog-size", "128")
	c := ns.open(b, Config{Group: 1, ReadBuffer: 256 << 20, FlushTimeout: 10 * time.Millisecond})
	// A sink that is never read (so no ICMP port unreachable) and a sender.
	var sink net.PacketConn
	var udp net.Conn
	if err := ns.Do(func() (err error) {
		if sink, err = net.ListenPacket("udp4", "127.0.0.1:9"); err != nil {
			return err
		}
		udp, err = net.Dial("udp4", "127.0.0.1:9")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	defer udp.Close()
	msg := pattern(200)

	var read, copied, batches int
	fn := func(p *Packet) { read++; copied += len(p.Payload) }
	b.ReportAllocs()
	b.ResetTimer()
	for left := b.N; left > 0; {
		chunk := min(left, 50000)
		b.StopTimer()
		for range chunk {
			if _, err := udp.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(30 * time.Millisecond) // the last batch flushes
		b.StartTimer()
		for want := read + chunk; read < want; {
			if _, err := c.ReadBatch(fn); err != nil {
				b.Fatal(err)
			}
			batches++
		}
		left -= chunk
	}
	b.StopTimer()
	s := c.Stats()
	if s.SeqGaps != 0 || s.ENOBUFS != 0 {
		b.Fatalf("packets lost while filling: %+v", s)
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "packets/s")
	b.ReportMetric(float64(copied)/float64(read), "bytes/packet")
	b.ReportMetric(float64(read)/float64(batches), "packets/batch")
}

// BenchmarkReadWhileSending measures the sustained rate with the default
// Config: one goroutine floods the namespace's loopback with UDP
// datagrams (logged headers-only) while Read drains them. Both share the
// machine's cores with the kernel's logging work, so the figure is what
// the whole path sustains here, with the fraction lost.
func BenchmarkReadWhileSending(b *testing.B) {
	needRoot(b)
	ns := newNetns(b)
	ns.Must(b, "iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "NFLOG", "--nflog-group", "1", "--nflog-size", "128")
	c := ns.open(b, Config{Group: 1})
	var sink net.PacketConn
	var udp net.Conn
	if err := ns.Do(func() (err error) {
		if sink, err = net.ListenPacket("udp4", "127.0.0.1:9"); err != nil {
			return err
		}
		udp, err = net.Dial("udp4", "127.0.0.1:9")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	defer udp.Close()
	msg := pattern(200)

	stop := make(chan struct{})
	sent := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := udp.Write(msg); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
		// Keep a trickle going so that a lost final batch still shows as
		// a gap and the reader below can finish.
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				_, _ = udp.Write(msg)
			}
		}
	}()
	fn := func(*Packet) {}
	for {
		if _, err := c.ReadBatch(fn); err != nil {
			b.Fatal(err)
		}
		if s := c.Stats(); s.Packets+s.SeqGaps >= uint64(b.N) {
			break
		}
	}
	b.StopTimer()
	close(stop)
	if err := <-sent; err != nil {
		b.Fatal(err)
	}
	s := c.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
	b.ReportMetric(100*float64(s.SeqGaps)/float64(s.Packets+s.SeqGaps), "%lost")
}
