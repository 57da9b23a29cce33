package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/classifier/offline"
	"github.com/connscope/connscope/classifier/report"
)

type classifyOptions struct {
	format     string
	cfg        flow.Config
	stats      bool
	anomalies  int
	cpuProfile string
}

// holdUsage is the help of --hold, a flag of classify, classifier and
// standalone (flow.Config.Hold).
const holdUsage = "silence after which an open connection is finished; until then a late packet (an RST, a second SYN) still belongs to it (default 10s, or --idle-timeout if longer)"

func newClassifyCommand() *cobra.Command {
	o := classifyOptions{}
	cmd := &cobra.Command{
		Use:   "classify [flags] FILE...",
		Short: "Classify the TCP connections in pcap or pcapng files",
		Long: `classify reads pcap and pcapng files (Ethernet with VLAN tags, PPPoE and
MPLS, raw IP, Linux SLL/SLL2, NFLOG, BSD loopback, PPP, Cisco HDLC),
assembles TCP connections from their client packets and judges each one:
the stage where it ended (post_syn, post_ack, post_psh, later_in_flow,
no_match), its tags and its signature, or why it is excluded.

Several files are merged by timestamp and read as one stream. FILE "-" is
standard input (tcpdump -w - | connscope classify -), and a file compressed
with gzip or zstd (.pcap.gz, .pcapng.zst) is decompressed as it is read;
for other compressors, pipe (xzcat capture.pcap.xz | connscope classify -).
A corrupt or truncated file is reported with its byte offset (in the
decompressed data of a compressed file) after the connections read before
it, and the exit status is then 1. With "-" among the files, Ctrl-C (which
also stops the tcpdump in front) finishes the reading instead of killing
it; a second Ctrl-C stops at once.

Formats:
  table  a summary for people: stage shares, tags, signatures, anomalous connections
  json   JSON Lines, one object per connection, excluded ones too
  radar  Radar's summary shape, with tag, signature and exclusion counts`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runClassify(cmd, o, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "table", "output format: table, json or radar")
	f.IntVar(&o.cfg.PacketCap, "packet-cap", flow.DefaultPacketCap, "client packets of a connection that count (1-64)")
	f.DurationVar(&o.cfg.IdleTimeout, "idle-timeout", flow.DefaultIdleTimeout, "silence after which a connection is judged timed out")
	f.DurationVar(&o.cfg.Hold, "hold", 0, holdUsage)
	f.IntVar(&o.cfg.MaxOpen, "max-open", flow.DefaultMaxOpen, "connections held at most; the least recently active are evicted and counted")
	f.BoolVar(&o.stats, "stats", false, "print reading and assembly counters as JSON on stderr at the end")
	f.IntVar(&o.anomalies, "anomalies", 50, "anomalous connections listed by --format table")
	f.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile of the run to this file (for go tool pprof; make pgo builds cmd/connscope/default.pgo from such profiles)")
	return cmd
}

func runClassify(cmd *cobra.Command, o classifyOptions, files []string) error {
	switch o.format {
	case "table", "json", "radar":
	default:
		return fmt.Errorf("--format %q is not one of table, json, radar", o.format)
	}
	if o.cfg.PacketCap < 1 || o.cfg.PacketCap > flow.MaxPacketCap {
		return fmt.Errorf("--packet-cap %d: packet cap must be between 1 and %d", o.cfg.PacketCap, flow.MaxPacketCap)
	}
	if o.cfg.IdleTimeout <= 0 {
		return fmt.Errorf("--idle-timeout %s: idle timeout must be positive", o.cfg.IdleTimeout)
	}
	if o.cfg.Hold < 0 {
		return fmt.Errorf("--hold %s must not be negative", o.cfg.Hold)
	}
	if o.cfg.MaxOpen < 2 {
		return fmt.Errorf("--max-open %d: must be at least 2", o.cfg.MaxOpen)
	}
	if err := o.cfg.Validate(); err != nil {
		return fmt.Errorf("invalid flags: %w", err)
	}
	if o.anomalies < 0 {
		return fmt.Errorf("--anomalies %d must not be negative", o.anomalies)
	}
	if err := offline.CheckNames(files); err != nil {
		return err
	}
	if o.cpuProfile != "" {
		stop, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer func() {
			if err := stop(); err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "connscope classify: warning:", err)
			}
		}()
	}
	if slices.Contains(files, capture.Stdin) {
		defer finishOnInterrupt(cmd.ErrOrStderr())()
	}

	out := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<16)
	sum := report.Summary{MaxAnomalous: o.anomalies}
	var line []byte
	st, readErr := offline.Run(files, o.cfg, func(c *flow.Conn, r classify.Result) {
		rc := report.FromConn(c, r)
		sum.Add(&rc)
		if o.format == "json" {
			line = report.AppendJSON(line[:0], &rc)
			out.Write(line)
		}
	})
	var err error
	fs := st.Flow
	var warnings []string
	if fs.EvictedOpen > 0 {
		warnings = append(warnings, fmt.Sprintf("%d connections were evicted to stay within --max-open %d", fs.EvictedOpen, o.cfg.MaxOpen))
	}
	if fs.Reordered > 0 {
		warnings = append(warnings, fmt.Sprintf("%d connections had a packet older than packets of theirs already taken (the capture is out of timestamp order): it was taken in arrival order; sort the capture first (reordercap IN OUT) to classify them exactly", fs.Reordered))
	}
	switch o.format {
	case "radar", "json":
		if o.format == "radar" {
			err = report.WriteRadar(out, &sum, time.Now())
		}
		for _, w := range warnings {
			fmt.Fprintln(cmd.ErrOrStderr(), "connscope classify: warning: "+w)
		}
	case "table":
		extra := []string{
			fmt.Sprintf("Read %d files: %d frames, %d TCP packets (%d non-TCP and %d undecodable skipped)",
				len(files), st.Frames, fs.Packets, st.SkippedNonTCP, st.SkippedUndecodable),
			fmt.Sprintf("Packets: %d counted, %d beyond the cap or after the end, %d server-to-client ignored",
				fs.Counted, fs.BeyondCap, fs.Reverse+fs.OrphanSYNACK),
		}
		for _, w := range warnings {
			extra = append(extra, "Warning: "+w)
		}
		err = report.WriteTable(out, &sum, extra)
	}
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if o.stats {
		b, _ := json.Marshal(st)
		fmt.Fprintln(cmd.ErrOrStderr(), string(b))
	}
	return readErr
}

// finishOnInterrupt makes an interrupt (Ctrl-C) finish the classification
// instead of killing it, for a capture read from standard input: in
// tcpdump -w - | connscope classify -, Ctrl-C reaches both, tcpdump writes
// what it holds and exits, and classify then reads the end of its input
// and reports every connection, as tcpdump reports its counts. A second
// interrupt stops at once (exit status 130). The returned function undoes
// it.
func finishOnInterrupt(stderr io.Writer) (undo func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-sig:
		case <-done:
			return
		}
		fmt.Fprintln(stderr, "connscope classify: interrupted: finishing when standard input ends (interrupt again to stop now)")
		select {
		case <-sig:
			os.Exit(130)
		case <-done:
		}
	})
	return func() {
		signal.Stop(sig)
		close(done)
		wg.Wait()
	}
}

// startCPUProfile starts Go's CPU profiler writing to file; stop ends the
// profile and closes the file.
func startCPUProfile(file string) (stop func() error, err error) {
	w, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(w); err != nil {
		w.Close()
		return nil, fmt.Errorf("--cpu-profile %s: %w", file, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := w.Close(); err != nil {
			return fmt.Errorf("--cpu-profile %s: %w", file, err)
		}
		return nil
	}, nil
}
