// Command ingestload drives the classifier's ingest for hack/bench/ingest.sh.
//
//	ingestload load -target HOST:PORT -token-file F -streams N -pid PID
//	ingestload rst -server HOST:PORT -api URL -trials N
//
// load: N agents' gRPC sinks (agent/ship, the agent's own code: the same
// encoding, one batch in flight per stream, acknowledged after the
// classifier journaled it) push batches of -batch records as fast as they
// are acknowledged. After -warmup it measures, over -duration, the records
// acknowledged and the CPU time (user + system, /proc/PID/stat) of the
// classifier process PID, and prints one JSON object: records per
// CPU-second of the classifier (its per-core rate) and per second of wall
// time. The records are a synthetic mix per connection: 8 in 10 normal
// (10 packets, the cap), 1 reset after the request (4 packets), 1 SYN
// alone (a timeout); a connection per client address and port, never
// reused.
//
// rst: -trials times, connects to -server and aborts the connection
// (SO_LINGER 0: the kernel sends an RST+ACK after the handshake), then
// polls the classifier's /api/v1/signatures/summary until its count of
// "SYN; ACK → RST+ACK" went up, and prints the times from the abort to
// the API showing it (median, p95, all) as JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/packet"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ingestload load|rst [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "load":
		err = load(os.Args[2:])
	case "rst":
		err = rst(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: load or rst", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingestload:", err)
		os.Exit(1)
	}
}

// cpuTicks returns the user + system clock ticks of process pid.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command may hold spaces: fields after ")" start at state (3).
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	return u + s, errors.Join(err1, err2)
}

// clkTck is USER_HZ, 100 on Linux for every architecture Go supports.
const clkTck = 100

type loadResult struct {
	Streams       int     `json:"streams"`
	Batch         int     `json:"batch"`
	Records       int64   `json:"records"`
	WallSeconds   float64 `json:"wall_seconds"`
	CPUSeconds    float64 `json:"classifier_cpu_seconds"`
	PerCPUSecond  float64 `json:"records_per_cpu_second"`
	PerSecond     float64 `json:"records_per_second"`
	Batches       int64   `json:"batches"`
	SinkErrors    int64   `json:"sink_errors"`
	ClassifierRSS string  `json:"classifier_peak_rss"`
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	target := fs.String("target", "", "the classifier's gRPC address")
	tokenFile := fs.String("token-file", "", "the ingest token")
	streams := fs.Int("streams", 1, "concurrent agents (streams)")
	batch := fs.Int("batch", ship.DefaultBatchSize, "records per batch (the agent sends ship.DefaultBatchSize when busy)")
	warmup := fs.Duration("warmup", 3*time.Second, "time before measuring")
	duration := fs.Duration("duration", 10*time.Second, "time measured")
	pid := fs.Int("pid", 0, "the classifier's PID, for its CPU time")
	fs.Parse(args)
	if *target == "" || *pid == 0 {
		return errors.New("load: -target and -pid are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var acked, batches, errs atomic.Int64
	var wg sync.WaitGroup
	failed := make(chan error, *streams)
	for i := range *streams {
		sk, err := ship.Open("grpc://"+*target, ship.Options{
			Node: fmt.Sprintf("bench-%d", i), Policy: "bench-ingest", TokenFile: *tokenFile, AckTimeout: time.Minute,
		})
		if err != nil {
			return err
		}
		defer sk.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := &gen{stream: i}
			recs := make([]packet.Record, *batch)
			for ctx.Err() == nil {
				g.fill(recs)
				for ctx.Err() == nil {
					err := sk.Send(ctx, recs)
					if err == nil {
						break
					}
					if ctx.Err() == nil {
						errs.Add(1)
						if errs.Load() > 100 {
							failed <- err
							return
						}
						time.Sleep(100 * time.Millisecond)
					}
				}
				if ctx.Err() == nil {
					acked.Add(int64(len(recs)))
					batches.Add(1)
				}
			}
		}()
	}
	select {
	case err := <-failed:
		return err
	case <-time.After(*warmup):
	}
	c0, err := cpuTicks(*pid)
	if err != nil {
		return err
	}
	r0, b0, t0 := acked.Load(), batches.Load(), time.Now()
	select {
	case err := <-failed:
		return err
	case <-time.After(*duration):
	}
	c1, err := cpuTicks(*pid)
	if err != nil {
		return err
	}
	r1, b1, t1 := acked.Load(), batches.Load(), time.Now()
	cancel()
	wg.Wait()
	res := loadResult{
		Streams: *streams, Batch: *batch, Records: r1 - r0, Batches: b1 - b0, SinkErrors: errs.Load(),
		WallSeconds: t1.Sub(t0).Seconds(), CPUSeconds: float64(c1-c0) / clkTck,
	}
	res.PerSecond = float64(res.Records) / res.WallSeconds
	if res.CPUSeconds > 0 {
		res.PerCPUSecond = float64(res.Records) / res.CPUSeconds
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", *pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				res.ClassifierRSS = strings.TrimSpace(v)
			}
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// gen makes the synthetic packets of one stream's connections.
type gen struct {
	stream int
	conn   int // connections begun
	pkt    int // next packet of the current connection
	ipid   uint16
}

// The flags of the three kinds of connection.
var (
	normal = []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.ACK, packet.PSH | packet.ACK,
		packet.ACK, packet.ACK, packet.PSH | packet.ACK, packet.ACK, packet.FIN | packet.ACK}
	reset   = []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.RST}
	synOnly = []packet.Flags{packet.SYN}
)

var server = netip.MustParseAddr("198.18.0.2")

// fill writes the next len(recs) packets, stamped now.
func (g *gen) fill(recs []packet.Record) {
	now := time.Now().UnixNano()
	for i := range recs {
		kind := normal
		switch g.conn % 10 {
		case 8:
			kind = reset
		case 9:
			kind = synOnly
		}
		k := g.conn
		r := &recs[i]
		*r = packet.Record{
			Timestamp: now + int64(i), SrcPort: uint16(1024 + (k>>16)%60000), DstPort: 443,
			Flags: kind[g.pkt], Seq: uint32(k)*7919 + uint32(g.pkt)*100, Window: 502, TTL: 57, IPID: g.ipid, DF: true,
		}
		if g.pkt > 0 {
			r.Ack = 12345
		}
		if kind[g.pkt] == packet.SYN {
			r.Window = 64240
			r.NumOptions = 5
			copy(r.Options[:], []uint8{2, 4, 8, 1, 3})
		}
		if kind[g.pkt]&packet.PSH != 0 {
			r.PayloadLen = 517
		}
		r.SetSrc(netip.AddrFrom4([4]byte{10, byte(g.stream), byte(k >> 8), byte(k)}))
		r.SetDst(server)
		g.ipid++
		g.pkt++
		if g.pkt == len(kind) {
			g.pkt = 0
			g.conn++
		}
	}
}

type rstResult struct {
	Trials    int       `json:"trials"`
	MedianS   float64   `json:"median_seconds"`
	P95S      float64   `json:"p95_seconds"`
	AllS      []float64 `json:"all_seconds"`
	Signature string    `json:"signature"`
}

const rstSignature = "SYN; ACK → RST+ACK"

func rst(args []string) error {
	fs := flag.NewFlagSet("rst", flag.ExitOnError)
	srv := fs.String("server", "", "a TCP server the agent samples")
	api := fs.String("api", "", "the classifier's HTTP API, http://HOST:PORT")
	trials := fs.Int("trials", 15, "resets to time")
	fs.Parse(args)
	if *srv == "" || *api == "" {
		return errors.New("rst: -server and -api are required")
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	count := func() (int64, error) {
		resp, err := hc.Get(*api + "/api/v1/signatures/summary?dateRange=1d")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var v struct {
			Result struct {
				Counts map[string]int64 `json:"counts"`
			} `json:"result"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return 0, err
		}
		return v.Result.Counts[rstSignature], nil
	}
	var all []float64
	for range *trials {
		before, err := count()
		if err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", *srv, 5*time.Second)
		if err != nil {
			return err
		}
		if err := c.(*net.TCPConn).SetLinger(0); err != nil {
			return err
		}
		time.Sleep(10 * time.Millisecond) // the handshake's ACK is out before the reset
		t0 := time.Now()
		c.Close()
		for {
			n, err := count()
			if err != nil {
				return err
			}
			if n > before {
				break
			}
			if time.Since(t0) > time.Minute {
				return fmt.Errorf("the reset did not show in the API within a minute")
			}
			time.Sleep(20 * time.Millisecond)
		}
		all = append(all, time.Since(t0).Seconds())
		time.Sleep(100 * time.Millisecond)
	}
	sorted := slices.Sorted(slices.Values(all))
	res := rstResult{Trials: len(all), AllS: all, Signature: rstSignature,
		MedianS: sorted[len(sorted)/2], P95S: sorted[min(len(sorted)-1, (len(sorted)*95+99)/100-1)]}
	if len(sorted)%2 == 0 {
		res.MedianS = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
