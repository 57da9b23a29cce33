package nflog

// Helpers for the tests that need root and a real kernel. Each such test
// makes a network namespace of its own, adds its rules and sends its
// traffic only inside it (on its loopback), and deletes it in t.Cleanup,
// which removes the rules too. The machine's own netfilter rules and
// interfaces are never touched.

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
	"github.com/connscope/connscope/packet"
)

// needRoot skips the test unless it runs as root with ip, nsenter and
// iptables at hand, and CONNSCOPE_SKIP_ROOT_TESTS is not 1.
func needRoot(tb testing.TB) {
	tb.Helper()
	netnstest.NeedRoot(tb, "network namespaces, iptables, nfnetlink_log")
	netnstest.NeedTools(tb, "apt-get install iptables", "iptables", "ip6tables")
}

// netns is a network namespace made by a test.
type netns struct {
	*netnstest.NS
}

// newNetns adds a namespace cs-nflog-<random> with its loopback up, and
// deletes it when the test ends.
func newNetns(tb testing.TB) *netns {
	tb.Helper()
	return &netns{netnstest.New(tb, "nflog")}
}

// open opens an NFLOG socket inside the namespace and closes it when the
// test ends (before the namespace is deleted).
func (ns *netns) open(tb testing.TB, cfg Config) *Conn {
	tb.Helper()
	c, err := ns.tryOpen(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (ns *netns) tryOpen(cfg Config) (*Conn, error) {
	var c *Conn
	err := ns.Do(func() (err error) {
		c, err = Open(cfg)
		return err
	})
	return c, err
}

// listen starts a TCP listener in the namespace that reads and discards
// whatever its peers send.
func (ns *netns) listen(tb testing.TB, network, addr string) *net.TCPListener {
	tb.Helper()
	return ns.Listen(tb, network, addr, netnstest.Discard).(*net.TCPListener)
}

// dial connects to addr from inside the namespace.
func (ns *netns) dial(tb testing.TB, network, addr string) *net.TCPConn {
	tb.Helper()
	var conn net.Conn
	if err := ns.Do(func() (err error) {
		conn, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

// logged is a copy of a Packet that outlives the callback, with its
// decoded record.
type logged struct {
	Packet
	rec    packet.Record
	decErr error
}

// reader runs Conn.Read in a goroutine and keeps copies of the packets.
type reader struct {
	c    *Conn
	mu   sync.Mutex
	pkts []logged
	done chan error
	once sync.Once
}

func startReader(tb testing.TB, c *Conn) *reader {
	r := &reader{c: c, done: make(chan error, 1)}
	go func() {
		r.done <- c.Read(func(p *Packet) {
			l := logged{Packet: *p}
			l.Payload = append([]byte(nil), p.Payload...)
			l.Prefix = append([]byte(nil), p.Prefix...)
			l.decErr = packet.Decode(l.Payload, l.Timestamp, &l.rec)
			r.mu.Lock()
			r.pkts = append(r.pkts, l)
			r.mu.Unlock()
		})
	}()
	tb.Cleanup(func() { r.stop(tb) })
	return r
}

// stop closes the Conn and waits for Read to return net.ErrClosed.
func (r *reader) stop(tb testing.TB) {
	r.once.Do(func() {
		_ = r.c.Close()
		select {
		case err := <-r.done:
			if !errors.Is(err, net.ErrClosed) {
				tb.Errorf("Read returned %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			tb.Errorf("Read still running 5 s after Close")
		}
	})
}

// waitFor polls until ok holds for the packets read so far, and returns
// them; it fails the test after the timeout.
func (r *reader) waitFor(tb testing.TB, what string, ok func([]logged) bool) []logged {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		pkts := append([]logged(nil), r.pkts...)
		r.mu.Unlock()
		if ok(pkts) {
			return pkts
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s; read %d packets, stats %+v", what, len(pkts), r.c.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// find returns the first packet for which match holds.
func find(pkts []logged, match func(*logged) bool) *logged {
	for i := range pkts {
		if match(&pkts[i]) {
			return &pkts[i]
		}
	}
	return nil
}
