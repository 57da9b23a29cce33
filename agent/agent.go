package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/connscope/connscope/agent/nflog"
	"github.com/connscope/connscope/agent/rules"
	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/packet"
)

// Options are what a caller may change besides Config. The zero value
// logs nothing and runs the iptables programs found in PATH.
type Options struct {
	// Logger receives what the agent does and repairs. Nil discards.
	Logger *slog.Logger
	// LookPath finds the iptables programs (see rules.Options.LookPath).
	// Nil means exec.LookPath.
	LookPath func(name string) (string, error)
}

// Agent runs one sampling policy on the node. Make it with New, run it
// with Run; Ready and Handler may be used from any goroutine.
type Agent struct {
	cfg    Config
	policy rules.Policy
	opts   Options
	base   *slog.Logger // as given
	log    *slog.Logger // with the policy's name

	reg  *prometheus.Registry
	info *prometheus.GaugeVec

	// What the metrics and readiness read. conn and queue are set once
	// opened and stay set after they are closed, so that the counters
	// keep their last values.
	conn         atomic.Pointer[nflog.Conn]
	queue        atomic.Pointer[ship.Queue]
	nflogBound   atomic.Bool
	rulesPresent atomic.Bool
	// draining: the agent is stopping, and the reader reads only what the
	// socket still holds (see Run, step 2).
	draining atomic.Bool
	// rulesSeen is set once a rules pass found or made the rules complete.
	rulesSeen atomic.Bool
	// sinkFailingSince is when the sink started failing without a success
	// since (Unix nanoseconds), 0 while it is not failing.
	sinkFailingSince atomic.Int64

	resyncs, restores, ruleErrors atomic.Uint64
	// readerWaitNanos is the time the reader waited for room in the queue
	// in waits that ended; readerWaitingSince is when the current wait
	// began (Unix nanoseconds), 0 while the reader is not waiting;
	// readerWaitReported is the largest total the metric has reported.
	readerWaitNanos, readerWaitingSince, readerWaitReported atomic.Int64
	undecodable                                             [numDecodeReasons]atomic.Uint64

	// dst is the queue's free cells, reserved for the kernel batch being
	// read (Queue.Reserve), dst[:nDst] decoded so far; they are queued
	// once the batch is read (Queue.Commit). staged holds the records that
	// do not fit, offered to the queue after those (Queue.OfferBatch).
	dst    []packet.Record
	nDst   int
	staged []packet.Record
}

// Reasons a logged packet could not be decoded into a record.
const (
	decodeNotTCP = iota
	decodeTruncated
	decodeMalformed
	numDecodeReasons
)

var decodeReasonNames = [numDecodeReasons]string{"not_tcp", "truncated", "malformed"}

const (
	// drainWait is how long the reader keeps reading after the rules are
	// removed: the kernel sends a batch it holds at the latest after the
	// group's flush timeout.
	drainWait = nflog.DefaultFlushTimeout + 100*time.Millisecond
	// drainIdle: after drainWait the reader reads what the socket still
	// holds until it has been empty this long, and drainMax bounds that.
	drainIdle = 50 * time.Millisecond
	drainMax  = 5 * time.Second
	// removeRetry: when removing the rules at a stop fails, the agent
	// tries once more after this long. An iptables run can fail for a
	// passing reason: a service manager that signals every process of the
	// service (systemd's default KillMode=control-group) kills the
	// iptables runs the agent starts as it stops, or another program
	// held the xtables lock past the wait.
	removeRetry = 500 * time.Millisecond
	// sinkPoll is how often the sink's health is sampled.
	sinkPoll = time.Second
)

// New checks the configuration and prepares an agent. It changes nothing
// on the node: no netfilter rule, no socket, no file.
func New(cfg Config, opts Options) (*Agent, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := cfg.policy()
	if err != nil {
		return nil, err // Validate has checked it
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The rules manager adds the policy to its own lines.
	a := &Agent{cfg: cfg, policy: p, opts: opts, base: log, log: log.With("policy", cfg.Policy)}
	a.reg = a.newRegistry()
	return a, nil
}

// Run runs cfg until ctx ends (see the package documentation), logging
// to slog's default logger.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg, Options{Logger: slog.Default()})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// Config is the agent's configuration, with defaults filled in.
func (a *Agent) Config() Config { return a.cfg }

// removeLeftPolicies takes err from Manager.Conflicts. When every other
// policy it names is one whose agent no longer runs, it removes their
// rules and returns what Conflicts says then (nil when nothing else
// conflicts); otherwise it returns err. An agent binds its NFLOG group
// before it installs a rule and removes its rules before it lets the group
// go, so a policy whose group has no reader in this network namespace is
// rules a killed agent left (after a node's agent pod was killed, or a
// policy deleted while its agent could not clean up); without this, the
// next policy given that label bit or group would refuse to start until
// someone ran `connscope agent cleanup --policy NAME`. A chain that logs
// to no group, or names no policy, is not judged: err is returned.
func (a *Agent) removeLeftPolicies(m *rules.Manager, err error, opts rules.Options) error {
	var ce *rules.ConflictError
	if !errors.As(err, &ce) {
		return err
	}
	bound, berr := nflog.BoundGroups()
	if berr != nil {
		return fmt.Errorf("%w (and whether their agents still run is unknown: %v)", err, berr)
	}
	var left []string
	for _, c := range ce.Conflicts {
		if c.OtherPolicy == "" || c.Group < 0 || bound[uint16(c.Group)] {
			return err
		}
		if !slices.Contains(left, c.OtherPolicy) {
			left = append(left, c.OtherPolicy)
		}
	}
	for _, name := range left {
		removed, cerr := rules.CleanupPolicy(opts, name)
		if cerr != nil {
			return errors.Join(err, fmt.Errorf("remove the rules policy %q left: %w", name, cerr))
		}
		a.log.Warn("removed the rules of another policy whose agent no longer runs (no reader on its NFLOG group): they used this policy's label bit or NFLOG group",
			"policy", name, "removed", removed)
	}
	return m.Conflicts()
}

// Run installs the rules, reads and ships until ctx ends, then removes the
// rules and flushes the queue. It returns nil after a clean shutdown, and
// an error when it could not start (nothing of it is left installed), when
// reading failed, or when the rules could not all be removed.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.cfg
	a.log.Info("starting", "node", cfg.NodeName, "probability", cfg.Probability, "packetCap", cfg.PacketCap,
		"labelBit", cfg.LabelBit, "nflogGroup", cfg.NFLOGGroup, "sink", cfg.Sink)

	// Everything that can fail for a reason outside netfilter fails first.
	if err := cfg.checkFiles(); err != nil {
		return err
	}
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr %s: %w (choose another port, or \"\" to turn the server off)", cfg.MetricsAddr, err)
		}
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics server stopped", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		a.log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	}

	backend, _ := rules.ParseBackend(cfg.Backend)
	ropts := rules.Options{Backend: backend, Logger: a.base, LookPath: a.opts.LookPath}
	m, err := rules.NewManager(a.policy, ropts)
	if err != nil {
		return fmt.Errorf("--backend %s: %w", cfg.Backend, err)
	}
	// Another policy labelling with our bit or logging to our group would
	// mix its connections into ours: refuse before anything is installed,
	// unless its agent is gone (its rules were left by a killed agent).
	if err := m.Conflicts(); err != nil {
		if err = a.removeLeftPolicies(m, err, ropts); err != nil {
			return fmt.Errorf("--label-bit %d, --nflog-group %d: %w", cfg.LabelBit, cfg.NFLOGGroup, err)
		}
	}
	det := m.Backend()
	a.info.WithLabelValues(cfg.Policy, cfg.NodeName, string(det.Backend), m.Chain(),
		fmt.Sprint(cfg.NFLOGGroup), fmt.Sprint(cfg.LabelBit)).Set(1)

	qcfg := queueConfig(cfg)
	if err := qcfg.Validate(); err != nil {
		return fmt.Errorf("--queue-capacity %d: %w", cfg.QueueCapacity, err)
	}
	sink, err := ship.Open(cfg.Sink, ship.Options{
		Node:      cfg.NodeName,
		Policy:    cfg.Policy,
		TokenFile: cfg.SinkTokenFile,
		CAFile:    cfg.SinkCAFile,
		Logger:    a.log,
		Counters:  a.counters,
	})
	if err != nil {
		return fmt.Errorf("--sink %s: %w", cfg.Sink, err)
	}
	sinkClosed := false
	defer func() {
		if !sinkClosed {
			_ = sink.Close()
		}
	}()
	q := ship.NewQueue(sink, qcfg)
	a.queue.Store(q)

	if ctx.Err() != nil {
		a.log.Info("stopped before any rule was installed", "reason", context.Cause(ctx))
		return nil
	}
	// The group is bound before any rule exists.
	conn, err := nflog.Open(cfg.nflogConfig())
	if err != nil {
		return fmt.Errorf("--nflog-group %d: %w", cfg.NFLOGGroup, err)
	}
	a.conn.Store(conn)
	a.nflogBound.Store(true)
	a.log.Info("NFLOG group bound", "group", cfg.NFLOGGroup, "copyRange", cfg.CopyRange, "receiveBuffer", conn.ReadBufferSize())

	readDone, stopRead := make(chan error, 1), make(chan struct{})
	go func() { readDone <- a.read(conn, stopRead) }()

	queueCtx, stopQueue := context.WithCancel(context.Background())
	defer stopQueue()
	queueDone := make(chan error, 1)
	go func() { queueDone <- q.Run(queueCtx) }()

	// The rules keeper and the sink watcher stop together, first.
	bgCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.watchSink(bgCtx, q)
	}()
	go func() {
		defer wg.Done()
		a.keepRules(bgCtx, m)
	}()

	var runErr error
	readerDone := false
	select {
	case <-ctx.Done():
		a.log.Info("stopping: removing the rules, then flushing the queue", "reason", context.Cause(ctx))
	case err := <-readDone:
		readerDone = true
		runErr = fmt.Errorf("read NFLOG group %d: %w", cfg.NFLOGGroup, err)
		a.log.Error("stopping: reading failed", "err", err)
	case err := <-queueDone:
		queueDone <- err
		runErr = fmt.Errorf("ship records to %s: queue stopped: %w", cfg.Sink, err)
		a.log.Error("stopping: the queue stopped", "err", err)
	}

	// 1. No more rule passes, then no more rules: the kernel stops logging.
	stopBackground()
	wg.Wait()
	var rmErr error
	removeErr := m.Remove()
	if removeErr != nil && (m.Wrote() || a.rulesSeen.Load()) {
		a.log.Warn("removing the rules failed; trying once more", "err", removeErr, "after", removeRetry)
		time.Sleep(removeRetry)
		removeErr = m.Remove()
	}
	switch err := removeErr; {
	case err == nil:
		a.log.Info("rules removed", "chain", m.Chain())
	case !m.Wrote() && !a.rulesSeen.Load():
		// Removing failed as installing did (no permission, no
		// iptables): nothing of this run is there to be left behind.
		a.log.Warn("no rules were installed, so none are left; could not check for rules of earlier runs", "err", err)
	default:
		rmErr = fmt.Errorf("remove the rules of policy %q: %w (run `connscope agent cleanup --policy %s`)", cfg.Policy, err, cfg.Policy)
		a.log.Error("could not remove every rule", "err", err)
	}
	a.rulesPresent.Store(false)

	// 2. Read what the kernel still holds for the group, then close it.
	// A reader waiting for room in a queue that a slow sink keeps full is
	// released: it reads on until the socket is empty, and what it cannot
	// queue is dropped and counted (queue_full), as are the packets the
	// kernel dropped meanwhile (kernel_seq_gap), so that every packet the
	// rules logged is accounted for.
	if !readerDone {
		time.Sleep(drainWait)
		a.draining.Store(true)
		close(stopRead)
		_ = conn.SetReadDeadline(time.Now().Add(drainIdle))
		var err error
		select {
		case err = <-readDone:
			_ = conn.Close()
		case <-time.After(drainMax):
			a.log.Warn("the socket was not drained within the time allowed; closing it", "allowed", drainMax)
			_ = conn.Close()
			err = <-readDone
		}
		if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) && runErr == nil {
			runErr = fmt.Errorf("read NFLOG group %d: %w", cfg.NFLOGGroup, err)
		}
	} else {
		_ = conn.Close()
	}
	a.nflogBound.Store(false)

	// 3. The queue ships what it holds within the shutdown timeout.
	stopQueue()
	select {
	case err := <-queueDone:
		if err != nil {
			a.log.Warn("records left unshipped", "err", err)
		}
	case <-time.After(time.Duration(cfg.ShutdownTimeout) + 5*time.Second):
		a.log.Warn("the queue did not stop within the shutdown timeout", "timeout", cfg.ShutdownTimeout)
	}
	if err := sink.Close(); err != nil {
		a.log.Warn("closing the sink", "err", err)
	}
	sinkClosed = true

	ns, qs := conn.Stats(), q.Stats()
	a.log.Info("stopped", "logged", ns.Packets, "lostKernel", ns.SeqGaps, "enobufs", ns.ENOBUFS,
		"undecodable", a.undecodableTotal(), "shipped", qs.Shipped, "droppedQueueFull", qs.DroppedQueueFull,
		"droppedRejected", qs.DroppedRejected, "unshipped", qs.Queued, "sinkErrors", qs.SinkErrors)
	return errors.Join(runErr, rmErr)
}

// handle decodes one logged packet into the next of the queue's cells
// reserved for the batch, or, when they are all taken, into the staged
// records. It runs on the reading goroutine; read queues the batch.
func (a *Agent) handle(p *nflog.Packet) {
	var r *packet.Record
	inDst := a.nDst < len(a.dst)
	if inDst {
		r = &a.dst[a.nDst]
	} else {
		a.staged = append(a.staged, packet.Record{})
		r = &a.staged[len(a.staged)-1]
	}
	err := packet.Decode(p.Payload, p.Timestamp, r)
	switch {
	case err == nil && inDst:
		a.nDst++
	case err != nil && !inDst:
		a.staged = a.staged[:len(a.staged)-1]
	}
	if err != nil {
		switch {
		case errors.Is(err, packet.ErrNotTCP):
			a.undecodable[decodeNotTCP].Add(1)
		case errors.Is(err, packet.ErrTruncated):
			a.undecodable[decodeTruncated].Add(1)
		default:
			a.undecodable[decodeMalformed].Add(1)
		}
	}
}

// offerStaged hands the staged records to q, waiting for room as long as
// the queue is full, until stop is closed: then what does not fit is
// dropped, and counted by the queue as queue_full.
func (a *Agent) offerStaged(q *ship.Queue, stop <-chan struct{}) {
	recs := a.staged
	for len(recs) > 0 {
		// The reader is the queue's one producer: the room WaitRoom
		// reports stays free for it.
		free := q.Room()
		if free == 0 {
			free = a.waitRoom(q, stop)
		}
		if free == 0 {
			q.OfferBatch(recs)
			break
		}
		recs = recs[q.OfferBatch(recs[:min(len(recs), free)]):]
	}
	a.staged = a.staged[:0]
}

// waitRoom is q.WaitRoom(stop), timed for readerWaitSeconds.
func (a *Agent) waitRoom(q *ship.Queue, stop <-chan struct{}) int {
	start := time.Now().UnixNano()
	a.readerWaitingSince.Store(start)
	free := q.WaitRoom(stop)
	a.readerWaitingSince.Store(0)
	a.readerWaitNanos.Add(time.Now().UnixNano() - start)
	return free
}

// read reads the group until it is closed, decoding each kernel batch's
// packets (handle) straight into the queue's free cells and queueing them
// together; what does not fit is offered once there is room.
//
// While the queue is full it waits for room before it reads on: when the
// sink is slower than the traffic (a small CPU limit, a sink that is
// down), what is not read yet waits in the socket's receive buffer, where
// it costs nothing, and what the buffer cannot hold is dropped by the
// kernel and counted from its sequence numbers (kernel_seq_gap). Reading
// and decoding packets only to drop them at a full queue would take the
// CPU the sender needs, and lose as many. Closing stop ends the wait.
//
// After each batch it lets the other goroutines run (the queue's sender
// above all): with one processor a reader that finds a backlog in the
// socket would otherwise fill the queue before the sender takes any, and
// the records would go cold in the cache.
func (a *Agent) read(conn *nflog.Conn, stop <-chan struct{}) error {
	q := a.queue.Load()
	for {
		if a.draining.Load() {
			// Stopping: read on only while the socket has packets.
			if err := conn.SetReadDeadline(time.Now().Add(drainIdle)); err != nil {
				return err
			}
		}
		a.dst, a.nDst = q.Reserve(), 0
		_, err := conn.ReadBatch(a.handle)
		q.Commit(a.nDst)
		a.dst, a.nDst = nil, 0
		a.offerStaged(q, stop)
		if err != nil {
			return err
		}
		runtime.Gosched()
	}
}

// readerWaitSeconds is the time the reader has waited for room in the
// queue, the current wait included. It never decreases: a scrape between
// the end of a wait and its addition to the total (offerStaged) reports
// the previous figure again.
func (a *Agent) readerWaitSeconds() float64 {
	d := a.readerWaitNanos.Load()
	if since := a.readerWaitingSince.Load(); since != 0 {
		d += max(time.Now().UnixNano()-since, 0)
	}
	for {
		last := a.readerWaitReported.Load()
		if d <= last {
			return float64(last) / 1e9
		}
		if a.readerWaitReported.CompareAndSwap(last, d) {
			return float64(d) / 1e9
		}
	}
}

func (a *Agent) undecodableTotal() uint64 {
	var n uint64
	for i := range a.undecodable {
		n += a.undecodable[i].Load()
	}
	return n
}

// keepRules installs the rules at once, removes an earlier run's leftovers
// of the same policy name after the first success, then every resync
// period checks the rules (the canary) and restores them when they were
// changed. It is rules.Manager.Run with counts and readiness: a failed
// pass is retried sooner, from one second doubling up to the period.
func (a *Agent) keepRules(ctx context.Context, m *rules.Manager) {
	resync := time.Duration(a.cfg.Resync)
	const firstRetry = time.Second
	retry := firstRetry
	cleaned := false
	for {
		wait := resync
		if err := a.syncRules(m); err != nil {
			wait = min(retry, resync)
			a.log.Error("could not install the sampling rules; retrying", "err", err, "in", wait)
			retry *= 2
		} else {
			retry = firstRetry
			if !cleaned {
				switch err := m.CleanupStale(); {
				case err != nil:
					a.log.Error("could not remove rules left by an earlier run of this policy", "err", err)
				case len(m.EarlierRuns()) > 0:
					a.log.Info("started: took over what an earlier run of this policy left; nothing else of it is left", "earlier", m.EarlierRuns())
				default:
					a.log.Info("started: no rules of an earlier run of this policy were found")
				}
				cleaned = true
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// syncRules is one pass: while the rules are believed present, Check them
// and stop there when nothing changed; otherwise Ensure them.
func (a *Agent) syncRules(m *rules.Manager) error {
	a.resyncs.Add(1)
	if a.rulesPresent.Load() {
		err := m.Check()
		if err == nil {
			return nil
		}
		a.rulesPresent.Store(false)
		if errors.Is(err, rules.ErrDrift) {
			a.restores.Add(1)
			a.log.Warn("the rules were changed by someone else: restoring them", "err", err)
		} else {
			a.log.Warn("could not check the rules: installing them again", "err", err)
		}
	}
	if err := m.Ensure(); err != nil {
		a.ruleErrors.Add(1)
		return err
	}
	// Ensure ran because the rules were not known to be in place: at the
	// start, or after a repair.
	a.log.Info("rules installed", "chain", m.Chain(), "backend", m.Backend().Backend, "why", m.Backend().Reason)
	a.rulesPresent.Store(true)
	a.rulesSeen.Store(true)
	return nil
}

// watchSink follows the queue's counters: the sink is failing from the
// first sink error after a success (or since the start) until records are
// shipped again. It logs once when the sink starts failing, with the
// sink's error then, and once when it recovers, not at every retry.
func (a *Agent) watchSink(ctx context.Context, q *ship.Queue) {
	t := time.NewTicker(sinkPoll)
	defer t.Stop()
	prev := q.Stats()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := q.Stats()
		switch {
		case st.Shipped > prev.Shipped:
			if a.sinkFailingSince.Swap(0) != 0 {
				a.log.Info("the sink accepts records again")
			}
		case st.SinkErrors > prev.SinkErrors:
			if a.sinkFailingSince.CompareAndSwap(0, time.Now().UnixNano()) {
				a.log.Warn("the sink is failing; records wait in the queue and are dropped when it is full",
					"err", q.LastError(), "queued", st.Queued, "capacity", a.cfg.QueueCapacity)
			}
		}
		prev = st
	}
}

// queueConfig sizes the queue: a ring of Config.QueueCapacity records (the
// batch being sent is a part of it), batches of a quarter of that, at most
// ship.DefaultBatchSize, so that the reader can fill the rest of the ring
// while a batch is being sent.
func queueConfig(cfg Config) ship.QueueConfig {
	batch := min(ship.DefaultBatchSize, cfg.QueueCapacity/4)
	return ship.QueueConfig{
		Capacity:     cfg.QueueCapacity,
		BatchSize:    batch,
		DrainTimeout: time.Duration(cfg.ShutdownTimeout),
	}
}

// counters are the totals sent with every batch.
func (a *Agent) counters() ship.Counters {
	var c ship.Counters
	if conn := a.conn.Load(); conn != nil {
		st := conn.Stats()
		c.PacketsLogged, c.PacketsLostKernel, c.ReceiveOverflows, c.ReadErrors = st.Packets, st.SeqGaps, st.ENOBUFS, st.Errors
	}
	c.ReadErrors += a.undecodableTotal()
	if q := a.queue.Load(); q != nil {
		c.DroppedQueueFull = q.Stats().DroppedQueueFull
	}
	return c
}

// Ready says whether the agent samples as configured: nil when its rules
// are in place as of the last check, its NFLOG group is bound, and the
// sink has not been failing for longer than Config.SinkUnreadyAfter;
// otherwise an error saying what is missing.
func (a *Agent) Ready() error {
	var problems []error
	if !a.rulesPresent.Load() {
		problems = append(problems, errors.New("the sampling rules are not installed"))
	}
	if !a.nflogBound.Load() {
		problems = append(problems, fmt.Errorf("NFLOG group %d is not bound", a.cfg.NFLOGGroup))
	}
	if since := a.sinkFailingSince.Load(); since != 0 {
		if d := time.Since(time.Unix(0, since)); d > time.Duration(a.cfg.SinkUnreadyAfter) {
			problems = append(problems, fmt.Errorf("the sink has been failing for %v", d.Round(time.Second)))
		}
	}
	return errors.Join(problems...)
}
