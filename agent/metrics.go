package agent

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/connscope/connscope/agent/nflog"
	"github.com/connscope/connscope/agent/ship"
)

// The metrics, all in the agent's own registry. Counters read the
// counters of the NFLOG reader, the queue and the agent when scraped
// (CounterFunc, GaugeFunc), so the packet path updates nothing but its
// own atomics.
//
//	connscope_agent_info{policy,node,backend,chain,nflog_group,label_bit}  1
//	connscope_agent_packets_logged_total           NFLOG packets read
//	connscope_agent_packets_lost_total{reason}     packets lost before the sink:
//	    kernel_seq_gap (the kernel could not queue them on the socket),
//	    queue_full (read, not queued: the agent stopped with the queue full;
//	    it reads what the socket holds before it closes it) and rejected
//	    (in batches the sink refused as invalid, not to be sent again)
//	connscope_agent_nflog_enobufs_total            receive-buffer overflow reports
//	    (each stands for one or more packets counted in kernel_seq_gap)
//	connscope_agent_nflog_read_errors_total        malformed or unexpected netlink messages
//	connscope_agent_packets_undecodable_total{reason}  not_tcp, truncated, malformed
//	connscope_agent_records_queued                 records waiting for the sink
//	connscope_agent_queue_capacity_records         the queue's bound
//	connscope_agent_reader_wait_seconds_total      time the reader waited for room in it
//	connscope_agent_records_shipped_total          records the sink accepted
//	connscope_agent_sink_batches_total             batches the sink accepted
//	connscope_agent_sink_errors_total              failed sends
//	connscope_agent_sink_retries_total             sends retried after a failure
//	connscope_agent_sink_failing                   1 while the sink fails without a success since
//	connscope_agent_rules_resyncs_total            passes that checked or installed the rules
//	connscope_agent_rules_restores_total           passes that found the rules changed and restored them
//	connscope_agent_rules_errors_total             passes that failed to install the rules
//	connscope_agent_rules_present                  1 while the rules are in place (as of the last pass)
//	connscope_agent_nflog_bound                    1 while the NFLOG group is bound
//	connscope_agent_ready                          1 while /readyz answers 200
//
// and the Go runtime and process collectors (go_*, process_*).
func (a *Agent) newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	a.info = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "connscope_agent_info",
		Help: "The agent's policy, node, iptables backend, chain, NFLOG group and label bit (always 1).",
	}, []string{"policy", "node", "backend", "chain", "nflog_group", "label_bit"})
	reg.MustRegister(a.info)

	nf := func(get func(nflog.Stats) uint64) func() float64 {
		return func() float64 {
			if c := a.conn.Load(); c != nil {
				return float64(get(c.Stats()))
			}
			return 0
		}
	}
	qs := func(get func(ship.Stats) float64) func() float64 {
		return func() float64 {
			if q := a.queue.Load(); q != nil {
				return get(q.Stats())
			}
			return 0
		}
	}
	counter := func(name, help string, labels prometheus.Labels, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f))
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	counter("connscope_agent_packets_logged_total", "Packets read from the NFLOG group.", nil,
		nf(func(s nflog.Stats) uint64 { return s.Packets }))
	const lostHelp = "Packets lost before reaching the sink: kernel_seq_gap (the kernel could not queue them on the socket, from NFLOG sequence gaps, counted when the group's next packet arrives), queue_full (read but not queued because the agent stopped while the queue towards the sink was full: otherwise the reader waits for room, and what waits in the socket is counted in kernel_seq_gap if it overflows; at a stop the agent reads what the socket holds and counts here what it cannot queue), rejected (in batches the sink refused as invalid, which are not sent again)."
	counter("connscope_agent_packets_lost_total", lostHelp, prometheus.Labels{"reason": "kernel_seq_gap"},
		nf(func(s nflog.Stats) uint64 { return s.SeqGaps }))
	counter("connscope_agent_packets_lost_total", lostHelp, prometheus.Labels{"reason": "queue_full"},
		qs(func(s ship.Stats) float64 { return float64(s.DroppedQueueFull) }))
	counter("connscope_agent_packets_lost_total", lostHelp, prometheus.Labels{"reason": "rejected"},
		qs(func(s ship.Stats) float64 { return float64(s.DroppedRejected) }))
	counter("connscope_agent_nflog_enobufs_total", "Times the NFLOG socket reported that its receive buffer overflowed (ENOBUFS), counted at once; the packets lost are counted in connscope_agent_packets_lost_total{reason=\"kernel_seq_gap\"} when the group's next packet arrives.", nil,
		nf(func(s nflog.Stats) uint64 { return s.ENOBUFS }))
	counter("connscope_agent_nflog_read_errors_total", "Malformed or unexpected netlink messages read from the NFLOG socket.", nil,
		nf(func(s nflog.Stats) uint64 { return s.Errors }))
	for i, reason := range decodeReasonNames {
		counter("connscope_agent_packets_undecodable_total", "Logged packets that could not be decoded into a record: not_tcp, truncated, malformed.",
			prometheus.Labels{"reason": reason}, func() float64 { return float64(a.undecodable[i].Load()) })
	}

	gauge("connscope_agent_records_queued", "Records waiting in the queue for the sink.",
		qs(func(s ship.Stats) float64 { return float64(s.Queued) }))
	gauge("connscope_agent_queue_capacity_records", "Records the queue holds at most.",
		func() float64 { return float64(a.cfg.QueueCapacity) })
	counter("connscope_agent_reader_wait_seconds_total", "Seconds the NFLOG reader waited for room in the full queue towards the sink (a sink slower than the traffic, or down); meanwhile logged packets wait in the socket's receive buffer.", nil,
		a.readerWaitSeconds)
	counter("connscope_agent_records_shipped_total", "Records the sink accepted.", nil,
		qs(func(s ship.Stats) float64 { return float64(s.Shipped) }))
	counter("connscope_agent_sink_batches_total", "Batches the sink accepted.", nil,
		qs(func(s ship.Stats) float64 { return float64(s.Batches) }))
	counter("connscope_agent_sink_errors_total", "Sends to the sink that failed.", nil,
		qs(func(s ship.Stats) float64 { return float64(s.SinkErrors) }))
	counter("connscope_agent_sink_retries_total", "Sends to the sink retried after a failure.", nil,
		qs(func(s ship.Stats) float64 { return float64(s.Retries) }))
	gauge("connscope_agent_sink_failing", "1 while the sink fails without a success since the first failure.",
		func() float64 { return bool01(a.sinkFailingSince.Load() != 0) })

	counter("connscope_agent_rules_resyncs_total", "Passes that checked the rules, or installed them.", nil,
		func() float64 { return float64(a.resyncs.Load()) })
	counter("connscope_agent_rules_restores_total", "Passes that found the rules changed by someone else and restored them.", nil,
		func() float64 { return float64(a.restores.Load()) })
	counter("connscope_agent_rules_errors_total", "Passes that failed to install the rules.", nil,
		func() float64 { return float64(a.ruleErrors.Load()) })
	gauge("connscope_agent_rules_present", "1 while the sampling rules are in place, as of the last pass.",
		func() float64 { return bool01(a.rulesPresent.Load()) })
	gauge("connscope_agent_nflog_bound", "1 while the NFLOG group is bound.",
		func() float64 { return bool01(a.nflogBound.Load()) })
	gauge("connscope_agent_ready", "1 while the agent is ready (/readyz answers 200).",
		func() float64 { return bool01(a.Ready() == nil) })
	return reg
}

// Registry is the agent's metrics registry.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Handler serves /metrics, /healthz (200 while the process runs) and
// /readyz (200 when Ready, else 503 with the reasons).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := a.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
