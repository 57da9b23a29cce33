// Command chbench is the ClickHouse benchmark (hack/bench/clickhouse.sh,
// `make bench`). It starts its own ClickHouse server (internal/chtest: a
// process of its own on loopback, data in a temporary folder, stopped by
// PID), and on one capture (gencap's mix) measures:
//
//   - agent insert: the agents' clickhouse sink (agent/ship) inserting the
//     records in batches of 1024 (the agent's default), one Send at a time as
//     the agent's queue does: rows per second of wall time, and rows per
//     CPU second of this process (nothing else runs in it meanwhile: the
//     agent side's cost "per core"); peer: ClickHouse's own clickhouse-client
//     inserting the same rows (RowBinary over the native protocol) from one
//     file, rows per its CPU second;
//   - classification: 1 replica, then 2 replicas (in this process, sharing
//     the machine with the server), classifying every window of a fresh
//     copy of the packets: connections per second of wall time, and per
//     replica; peer: the offline engine (classifier/offline, as `connscope
//     classify`) on the capture file.
//
// It prints a Markdown table.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/classifier/chstore"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/offline"
	"github.com/connscope/connscope/internal/chclient"
	"github.com/connscope/connscope/internal/chtest"
)

func main() {
	capPath := flag.String("capture", "", "capture file (gencap)")
	window := flag.Duration("window", time.Minute, "window length")
	parts := flag.Int("parts", 8, "parts per window")
	flag.Parse()
	if err := run(*capPath, *window, *parts); err != nil {
		fmt.Fprintln(os.Stderr, "chbench:", err)
		os.Exit(1)
	}
}

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func run(capPath string, window time.Duration, parts int) error {
	recs, err := capture.ReadFile(capPath)
	if err != nil {
		return err
	}
	bin, err := chtest.Binary()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "connscope-chbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := chtest.StartIn(dir, bin)
	if err != nil {
		return err
	}
	defer srv.Kill()
	ctx := context.Background()
	version, _ := srv.Client("").Version(ctx)

	flowCfg := flow.Config{}
	// Agent insert.
	stores := map[string]*chstore.Store{}
	for _, db := range []string{"one", "two", "peer"} {
		st, err := chstore.Open(ctx, chclient.Config{Addr: srv.Addr(), Database: db, Timeout: 10 * time.Minute})
		if err != nil {
			return err
		}
		defer st.Close()
		stores[db] = st
	}
	insert := func(db string) (time.Duration, time.Duration, error) {
		sink, err := ship.Open(srv.URL(db), ship.Options{Node: "node-1", Policy: "web", AckTimeout: time.Minute})
		if err != nil {
			return 0, 0, err
		}
		defer sink.Close()
		c0, t0 := cpu(), time.Now()
		for i := 0; i < len(recs); i += ship.DefaultBatchSize {
			if err := sink.Send(ctx, recs[i:min(i+ship.DefaultBatchSize, len(recs))]); err != nil {
				return 0, 0, err
			}
		}
		return time.Since(t0), cpu() - c0, nil
	}
	insWall, insCPU, err := insert("one")
	if err != nil {
		return err
	}
	if _, _, err := insert("two"); err != nil {
		return err
	}

	// Peer: clickhouse-client, the same rows from a file (native protocol).
	var rowsBuf bytes.Buffer
	row := chclient.Row{Node: "node-1", Policy: "web", Agent: 1}
	var b []byte
	for i := range recs {
		row.Rec, row.Batch, row.Idx = recs[i], uint64(i/1024), uint32(i%1024)
		b = chclient.AppendRow(b[:0], &row)
		rowsBuf.Write(b)
	}
	peerLine := "clickhouse-client not found"
	if cc, err := exec.LookPath("clickhouse-client"); err == nil {
		cmd := exec.Command(cc, "--host", "127.0.0.1", "--port", strconv.Itoa(srv.TCPPort()), "--database", "peer",
			"--query", "INSERT INTO packets ("+chclient.PacketColumns+") FORMAT RowBinary")
		cmd.Stdin = bytes.NewReader(rowsBuf.Bytes())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			peerLine = fmt.Sprintf("clickhouse-client failed: %v %s", err, stderr.String())
		} else {
			wall := time.Since(t0)
			pcpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			peerLine = fmt.Sprintf("| clickhouse-client (native protocol, one file) | %s | %s | %s | %s | agent sink does %.2f× its rows per CPU second |",
				rate(len(recs), wall), rate(len(recs), pcpu), secs(wall), secs(pcpu),
				float64(len(recs))/insCPU.Seconds()/(float64(len(recs))/pcpu.Seconds()))
		}
	}

	// Peer: the offline engine on the file.
	t0 := time.Now()
	offConns := 0
	if _, err := offline.Run([]string{capPath}, flowCfg, func(*flow.Conn, classify.Result) { offConns++ }); err != nil {
		return err
	}
	offWall := time.Since(t0)

	// Classification.
	end := recs[len(recs)-1].Timestamp + int64(3*window)
	classifyWith := func(db string, n int) (time.Duration, []chstore.Stats, error) {
		ks := make([]*chstore.Classifier, n)
		for i := range ks {
			k, err := chstore.NewClassifier(stores[db], chstore.ClassifierConfig{
				Window: window, Delay: time.Second, Parts: parts, Replica: fmt.Sprintf("r%d", i),
				Now: func() time.Time { return time.Unix(0, end) }, Poll: 10 * time.Millisecond,
			})
			if err != nil {
				return 0, nil, err
			}
			ks[i] = k
		}
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, k := range ks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					m, err := k.RunOnce(ctx)
					if err != nil {
						errs[i] = err
						return
					}
					if m == 0 {
						p, err := k.Pending(ctx)
						if err != nil || !p {
							errs[i] = err
							return
						}
						time.Sleep(5 * time.Millisecond)
					}
				}
			}()
		}
		wg.Wait()
		st := make([]chstore.Stats, n)
		for i, k := range ks {
			st[i] = k.Stats()
		}
		return time.Since(t0), st, errors.Join(errs...)
	}
	w1, s1, err := classifyWith("one", 1)
	if err != nil {
		return err
	}
	w2, s2, err := classifyWith("two", 2)
	if err != nil {
		return err
	}
	total := func(ss []chstore.Stats) (conns int64) {
		for _, s := range ss {
			conns += s.Connections
		}
		return conns
	}
	c1, c2 := total(s1), total(s2)
	if c1 != c2 {
		return fmt.Errorf("1 replica classified %d connections, 2 replicas %d", c1, c2)
	}

	fmt.Printf("ClickHouse %s (own server process, loopback); %d packets, %d connections (offline engine), windows of %s in %d parts; Go %s\n\n",
		version, len(recs), offConns, window, parts, goVersion())
	fmt.Println("| insert | rows/s (wall) | rows per CPU second | wall s | CPU s | |")
	fmt.Println("|---|---:|---:|---:|---:|---|")
	fmt.Printf("| **agent clickhouse sink** (HTTP RowBinary, batches of %d, one at a time) | %s | **%s** | %s | %s | |\n",
		ship.DefaultBatchSize, rate(len(recs), insWall), rate(len(recs), insCPU), secs(insWall), secs(insCPU))
	fmt.Println(peerLine)
	fmt.Println()
	fmt.Println("| classification | connections/s (wall) | per replica | wall s | |")
	fmt.Println("|---|---:|---:|---:|---|")
	fmt.Printf("| **1 replica** | **%s** | %s | %s | |\n", rate(int(c1), w1), rate(int(c1), w1), secs(w1))
	fmt.Printf("| **2 replicas** | **%s** | %s | %s | %.2f× 1 replica; parts: %d and %d |\n", rate(int(c2), w2), rate(int(c2)/2, w2), secs(w2),
		w1.Seconds()/w2.Seconds(), s2[0].Parts, s2[1].Parts)
	fmt.Printf("| offline engine on the file (`connscope classify`'s) | %s | | %s | 1 replica is %.1f× slower |\n", rate(offConns, offWall), secs(offWall),
		w1.Seconds()/offWall.Seconds())
	return nil
}

func rate(n int, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	v := float64(n) / d.Seconds()
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.0f k", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "?"
	}
	return string(bytes.TrimSpace(out))
}
