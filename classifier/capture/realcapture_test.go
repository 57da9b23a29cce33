package capture

// Real captures: tcpdump records TCP traffic on the loopback interface of
// a network namespace this test creates (and deletes), as Ethernet (lo),
// Linux SLL and SLL2 (the "any" device, which in the namespace is lo) and
// NFLOG, and editcap converts each file to pcapng. Needs root, ip,
// nsenter, tcpdump and editcap, and CONNSCOPE_SKIP_ROOT_TESTS not 1;
// skipped with a message otherwise. No packet leaves the namespace, and
// the host's own netfilter rules are not touched (the NFLOG rule lives in
// the namespace and goes with it).

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/netnstest"
	"github.com/connscope/connscope/packet"
)

const helperEnv = "CONNSCOPE_CAPTURE_TRAFFIC_PORT"

var saveReal = flag.Bool("save-real-captures", false, "copy the captures TestRealCaptures makes to testdata/real")

// Traffic the helper makes, per address family, toward port P:
// a connection sending dataLen bytes and closing with FIN, and one sending
// rstLen bytes and closing with RST (SO_LINGER 0).
const (
	dataLen = 1000
	rstLen  = 200
)

func TestRealCaptures(t *testing.T) {
	netnstest.NeedRoot(t, "a network namespace to capture in")
	netnstest.NeedTools(t, "apt-get install -y tcpdump tshark", "tcpdump", "editcap")
	ns := netnstest.New(t, "cap")

	// NFLOG of every TCP packet, in the namespace only; cut to 128 bytes
	// like the agent's copy range, and sent at once (threshold 1; else the
	// kernel batches until its buffer fills or a 1 s timer). Skipped if
	// the kernel or iptables cannot.
	const group = "7"
	nflogOK := true
	for _, ipt := range []string{"iptables", "ip6tables"} {
		_, err := ns.Run(time.Minute, ipt, "-A", "OUTPUT", "-p", "tcp",
			"-j", "NFLOG", "--nflog-group", group, "--nflog-size", "128", "--nflog-threshold", "1")
		if err != nil {
			t.Logf("no NFLOG capture: %s in the namespace: %v", ipt, err)
			nflogOK = false
		}
	}

	dir := t.TempDir()
	port := 20000 + int(randomUint16())%40000
	type capture struct {
		file     string
		args     []string
		linkType uint32
		snaplen  int
	}
	caps := []capture{
		// Full frames need a large ring: lo's 64 KiB MTU makes each ring
		// slot 256 KiB, and the 2 MiB default drops bursts.
		{"ether.pcap", []string{"-i", "lo", "-B", "65536"}, LinkTypeEthernet, 0},
		{"sll.pcap", []string{"-i", "any", "-y", "LINUX_SLL", "-B", "65536"}, LinkTypeLinuxSLL, 0},
		{"sll2.pcap", []string{"-i", "any", "-y", "LINUX_SLL2", "-s", "128"}, LinkTypeSLL2, 128},
	}
	if nflogOK {
		caps = append(caps, capture{"nflog.pcap", []string{"-i", "nflog:" + group}, LinkTypeNFLOG, 128})
	}
	logs := t.TempDir()
	var dumps []*netnstest.Proc
	for _, c := range caps {
		args := append([]string{"tcpdump", "--immediate-mode", "-U", "-Z", "root", "-w", filepath.Join(dir, c.file)}, c.args...)
		if c.linkType != LinkTypeNFLOG {
			args = append(args, "tcp")
		}
		d := ns.Start(t, logs, "tcpdump-"+c.file, args...)
		d.WaitOutput(t, "listening on", 10*time.Second)
		dumps = append(dumps, d)
	}

	start := time.Now()
	if _, err := ns.Run(time.Minute, "env", helperEnv+"="+strconv.Itoa(port),
		os.Args[0], "-test.run=^TestCaptureTrafficHelper$", "-test.v"); err != nil {
		t.Fatalf("traffic helper: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	end := time.Now()
	for _, d := range dumps {
		if err := d.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}

	for _, c := range caps {
		pcap := filepath.Join(dir, c.file)
		ngFile := strings.TrimSuffix(pcap, ".pcap") + ".pcapng"
		run(t, "editcap", "-F", "pcapng", pcap, ngFile)
		for _, f := range []string{pcap, ngFile} {
			t.Run(filepath.Base(f), func(t *testing.T) {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				checkRealCapture(t, filepath.Base(f), data, c.linkType, uint16(port), start, end)
				if *saveReal {
					if err := os.WriteFile(filepath.Join("testdata", "real", filepath.Base(f)), data, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}

// TestSavedRealCaptures checks captures that TestRealCaptures saved with
// -save-real-captures, so that machines without root still read files
// written by tcpdump, editcap and the kernel's NFLOG.
func TestSavedRealCaptures(t *testing.T) {
	linkTypes := map[string]uint32{"ether": LinkTypeEthernet, "sll": LinkTypeLinuxSLL, "sll2": LinkTypeSLL2, "nflog": LinkTypeNFLOG}
	files, _ := filepath.Glob(filepath.Join("testdata", "real", "*.pcap*"))
	if len(files) == 0 {
		t.Fatal("no files in testdata/real (make them with go test -run TestRealCaptures -save-real-captures as root)")
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			lt, ok := linkTypes[strings.TrimSuffix(strings.TrimSuffix(name, ".pcapng"), ".pcap")]
			if !ok {
				t.Fatalf("no link type known for %s", name)
			}
			checkRealCapture(t, name, data, lt, 0, time.Time{}, time.Time{})
		})
	}
}

// checkRealCapture reads a capture of the helper's traffic and checks the
// client's packets toward port (0: the destination port of the first SYN),
// with timestamps between start and end (unless zero).
func checkRealCapture(t *testing.T, name string, data []byte, linkType uint32, port uint16, start, end time.Time) {
	r, err := NewReader(bytes.NewReader(data), name)
	if err != nil {
		t.Fatal(err)
	}
	if _, lt, _, err := r.NextFrame(); err != nil || lt != linkType {
		t.Fatalf("first frame: link type %d, err %v; want link type %d", lt, err, linkType)
	}
	r, _ = NewReader(bytes.NewReader(data), name)
	type seen struct{ syn, data, rst, fin bool }
	got := map[uint8]*seen{4: {}, 6: {}}
	for {
		var rec packet.Record
		err := r.Next(&rec)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if port == 0 && rec.Flags == packet.SYN {
			port = rec.DstPort
		}
		if !start.IsZero() && (rec.Timestamp < start.Add(-time.Second).UnixNano() || rec.Timestamp > end.Add(time.Second).UnixNano()) {
			t.Errorf("timestamp %s outside the capture's %s..%s", time.Unix(0, rec.Timestamp), start, end)
		}
		if rec.DstPort != port {
			continue // server to client, or the probe of a closed port
		}
		s := got[rec.IPVersion]
		switch {
		case rec.Flags == packet.SYN:
			s.syn = true
			if k := rec.OptionKinds(); string(k) != string([]uint8{2, 4, 8, 1, 3}) {
				t.Errorf("IPv%d SYN option kinds %v, want Linux's [2 4 8 1 3]", rec.IPVersion, k)
			}
			if rec.IPVersion == 4 && !rec.DF {
				t.Errorf("IPv4 SYN without DF")
			}
		case rec.Flags.Has(packet.PSH|packet.ACK) && rec.PayloadLen == dataLen:
			s.data = true
		case rec.Flags.Has(packet.RST):
			s.rst = true
			if rec.PayloadLen != 0 {
				t.Errorf("RST with %d payload bytes", rec.PayloadLen)
			}
		case rec.Flags.Has(packet.FIN):
			s.fin = true
		}
	}
	for v, s := range got {
		if !s.syn || !s.data || !s.rst || !s.fin {
			t.Errorf("IPv%d: saw SYN %v, %d-byte PSH+ACK %v, RST %v, FIN %v; want all", v, s.syn, dataLen, s.data, s.rst, s.fin)
		}
	}
	st := r.Stats()
	if st.SkippedUndecodable != 0 || st.TCP == 0 || st.Bytes != int64(len(data)) {
		t.Errorf("stats %+v", st)
	}
}

// TestCaptureTrafficHelper is the traffic maker TestRealCaptures runs in
// its network namespace; on its own it does nothing.
func TestCaptureTrafficHelper(t *testing.T) {
	p := os.Getenv(helperEnv)
	if p == "" {
		return
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		addr := net.JoinHostPort(host, p)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 2)
		go func() {
			for i := 0; i < 2; i++ {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				go func(c net.Conn) {
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					buf := make([]byte, 4096)
					n, _ := io.ReadAtLeast(c, buf, 1)
					if n > 0 {
						c.Write([]byte("ok"))
					}
					io.Copy(io.Discard, c)
					done <- nil
				}(c)
			}
		}()
		// A graceful connection, then one closed with RST.
		for _, rst := range []bool{false, true} {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			n := dataLen
			if rst {
				n = rstLen
			}
			if _, err := c.Write(bytes.Repeat([]byte("x"), n)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
				t.Fatal(err)
			}
			if rst {
				c.(*net.TCPConn).SetLinger(0)
			}
			c.Close()
		}
		for i := 0; i < 2; i++ {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		ln.Close()
		// A closed port: the kernel answers the SYN with RST+ACK.
		closed := net.JoinHostPort(host, "1")
		if c, err := net.DialTimeout("tcp", closed, time.Second); err == nil {
			c.Close()
		}
	}
	fmt.Println("traffic done")
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func randomUint16() uint16 {
	b := make([]byte, 2)
	rand.Read(b)
	return uint16(b[0])<<8 | uint16(b[1])
}
