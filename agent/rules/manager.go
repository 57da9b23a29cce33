package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Manager installs one policy's rules and keeps them installed. Its
// methods are safe for concurrent use; they take turns.
type Manager struct {
	policy    Policy
	opts      Options
	log       *slog.Logger
	detection Detection
	chain     string
	families  []Family
	sets      map[Family]RuleSet
	handles   map[Family]*handle

	mu sync.Mutex
	// written is the chain as iptables listed it right after our last
	// rewrite. Later listings are compared with it, so that an iptables
	// that prints a rule differently from Rules does not make every
	// Ensure rewrite the chain.
	written map[Family][]string
	// writes counts chain rewrites and jump insertions (for tests).
	writes int
	// wrote is set before the first command that writes to netfilter
	// runs, whether it succeeds or not.
	wrote bool
	// looked holds the families whose chain Ensure has looked at once;
	// earlier lists what of an earlier run of the policy it found then,
	// and what CleanupStale removed.
	looked  map[Family]bool
	earlier []string

	// gen reads the nf_tables ruleset generation (nil: no shortcut).
	// checkedGen is the generation read before the last Check that found
	// everything in place, valid while checked is true; checksSkipped
	// counts Checks answered from it (for tests).
	gen           func() (uint32, error)
	checked       bool
	checkedGen    uint32
	checksSkipped int
}

// NewManager checks the policy, chooses the backend (opts.Backend, or as
// the host uses) and opens iptables for each of the policy's families. It
// changes nothing in netfilter.
func NewManager(p Policy, opts Options) (*Manager, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	det, err := DetectBackend(opts)
	if err != nil {
		return nil, err
	}
	if det.Backend == BackendLegacy {
		// The programs run as this process: they have its capabilities.
		if status, err := os.ReadFile("/proc/self/status"); err == nil {
			if err := checkLegacyCapabilities(string(status)); err != nil {
				return nil, fmt.Errorf("%w (backend legacy: %s)", err, det.Reason)
			}
		}
	}
	m := &Manager{
		policy:    p,
		opts:      opts,
		log:       opts.logger().With("policy", p.Name, "backend", det.Backend),
		detection: det,
		chain:     ChainName(p),
		sets:      map[Family]RuleSet{},
		handles:   map[Family]*handle{},
		written:   map[Family][]string{},
		looked:    map[Family]bool{},
		gen:       opts.generation(det.Backend),
	}
	for _, f := range allFamilies {
		if !p.hasFamily(f) {
			continue
		}
		h, err := newHandle(opts, f, det.Backend)
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Name, err)
		}
		m.families = append(m.families, f)
		m.handles[f] = h
		m.sets[f] = Rules(p, f)
	}
	m.log.Info("iptables backend chosen", "reason", det.Reason, "chain", m.chain)
	return m, nil
}

// Wrote reports whether Ensure has ever tried to write to netfilter (a
// chain, a rule, a jump), successfully or not. While it is false, nothing
// of this manager is installed: Ensure only found the rules in place, or
// failed before writing.
func (m *Manager) Wrote() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wrote
}

// Backend is the backend the manager writes to, and why it was chosen.
func (m *Manager) Backend() Detection { return m.detection }

// Chain is the name of the policy's chain (the same in every family).
func (m *Manager) Chain() string { return m.chain }

// RuleSets are the rules the manager installs, one set per family.
func (m *Manager) RuleSets() []RuleSet {
	out := make([]RuleSet, 0, len(m.families))
	for _, f := range m.families {
		out = append(out, m.sets[f])
	}
	return out
}

// Ensure installs the policy's rules, or repairs them, in every family of
// the policy. It is idempotent and cheap when nothing changed: it lists the
// chain and mangle PREROUTING (a few iptables runs per family) and writes
// only what differs:
//   - the chain is created when missing, and flushed and refilled when its
//     rules differ in any way from the desired ones;
//   - the jump is inserted at the top of mangle PREROUTING when missing;
//     jumps to our chain that differ from the desired one, or repeat it,
//     are deleted first. Nothing else in PREROUTING is touched.
//
// A family that fails does not stop the others; the errors are joined.
func (m *Manager) Ensure() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checked = false
	gen, genOK := m.generation()
	writes := m.writes
	var errs []error
	for _, f := range m.families {
		if err := m.ensureFamily(m.handles[f], m.sets[f]); err != nil {
			errs = append(errs, fmt.Errorf("install %s rules of policy %q in %s: %w", f, m.policy.Name, m.handles[f], err))
		}
	}
	if len(errs) > 0 || !genOK {
		return errors.Join(errs...)
	}
	if m.writes == writes {
		// Nothing written: the listings were a Check's.
		m.checked, m.checkedGen = true, gen
		return nil
	}
	// Our writes moved the generation: list once more now, so that the
	// next Check (the next resync) can rely on the generation.
	gen, genOK = m.generation()
	if err := m.check(gen, genOK); err != nil {
		m.log.Debug("the rules changed while they were installed", "err", err)
	}
	return nil
}

func (m *Manager) ensureFamily(h *handle, rs RuleSet) error {
	log := m.log.With("family", h.family.String(), "chain", rs.Chain)
	existed, err := h.ipt.ChainExists(table, rs.Chain)
	if err != nil {
		return fmt.Errorf("look for chain %s: %w", rs.Chain, err)
	}
	if !existed {
		m.wrote = true
		if err := h.ipt.NewChain(table, rs.Chain); err != nil {
			return fmt.Errorf("create chain %s: %w", rs.Chain, err)
		}
	}
	got, err := m.chainLines(h, rs.Chain)
	if err != nil {
		return err
	}
	// At the first look, a chain that exists was left by an earlier run
	// of the policy (killed, or with other settings), or made by someone
	// else; later, only someone else changes it.
	first := !m.looked[h.family]
	m.looked[h.family] = true
	want := m.expected(h.family, rs)
	same := slices.Equal(got, want)
	if first && existed {
		what := "kept: its rules are the policy's"
		if !same {
			what = "rewritten: its rules differ from the policy's"
		}
		m.earlier = append(m.earlier, fmt.Sprintf("%s: chain %s %s", h, rs.Chain, what))
	}
	if !same {
		switch {
		case first && existed:
			log.Warn("chain left by an earlier run of this policy (or written by someone else) differs from the policy: rewriting it",
				"found", got, "want", want)
		case existed:
			log.Warn("chain differs from the policy (changed by someone else): rewriting it", "found", got, "want", want)
		}
		m.wrote = true
		if err := h.ipt.ClearChain(table, rs.Chain); err != nil {
			return fmt.Errorf("flush chain %s: %w", rs.Chain, err)
		}
		for _, r := range rs.Rules {
			if err := h.ipt.Append(table, rs.Chain, r...); err != nil {
				return fmt.Errorf("add rule to %s: %w", rs.Chain, err)
			}
		}
		back, err := m.chainLines(h, rs.Chain)
		if err != nil {
			return err
		}
		if !slices.Equal(back, rs.Lines()) {
			log.Debug("iptables prints the rules differently from how they are rendered; comparing with its listing from now on",
				"listed", back, "rendered", rs.Lines())
		}
		m.written[h.family] = back
		m.writes++
	}

	jumps, err := jumpsTo(h, rs.Chain)
	if err != nil {
		return err
	}
	if len(jumps) == 1 {
		ok, err := h.ipt.Exists(table, hookChain, rs.Jump...)
		if err != nil {
			return fmt.Errorf("check the jump to %s: %w", rs.Chain, err)
		}
		if ok {
			return nil
		}
	}
	if len(jumps) > 0 {
		log.Warn("jumps to the chain differ from the policy's one jump: replacing them", "found", ruleTexts(jumps))
	} else if existed {
		log.Warn("jump from mangle PREROUTING was missing (removed or flushed by someone else): restoring it")
	}
	m.wrote = true
	for _, r := range jumps {
		if err := deleteRule(h, r); err != nil {
			return err
		}
	}
	if err := h.ipt.Insert(table, hookChain, 1, rs.Jump...); err != nil {
		return fmt.Errorf("add the jump from %s to %s: %w", hookChain, rs.Chain, err)
	}
	m.writes++
	return nil
}

// expected is the chain's desired listing: what iptables printed after
// our last rewrite, or the rendering before the first.
func (m *Manager) expected(f Family, rs RuleSet) []string {
	if w, ok := m.written[f]; ok {
		return w
	}
	return rs.Lines()
}

// chainLines lists the rules of a chain as iptables -S prints them.
func (m *Manager) chainLines(h *handle, chain string) ([]string, error) {
	lines, err := h.ipt.List(table, chain)
	if err != nil {
		return nil, fmt.Errorf("list chain %s: %w", chain, err)
	}
	var out []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "-A ") {
			out = append(out, l)
		}
	}
	return out, nil
}

// jumpsTo lists the rules in mangle PREROUTING whose target is chain.
func jumpsTo(h *handle, chain string) ([]rule, error) {
	lines, err := h.ipt.List(table, hookChain)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", hookChain, err)
	}
	s, err := parseListing(lines)
	if err != nil {
		return nil, err
	}
	var out []rule
	for _, r := range s.Rules[hookChain] {
		if r.Target == chain {
			out = append(out, r)
		}
	}
	return out, nil
}

func ruleTexts(rs []rule) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Line
	}
	return out
}

// deleteRule deletes a rule by its rulespec; one already gone is fine.
func deleteRule(h *handle, r rule) error {
	if err := h.ipt.Delete(table, r.Chain, r.Spec...); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete rule %q: %w", r.Line, err)
	}
	return nil
}

// deleteChain flushes and deletes a chain; one already gone is fine.
func deleteChain(h *handle, chain string) error {
	if err := h.ipt.ClearAndDeleteChain(table, chain); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete chain %s: %w", chain, err)
	}
	return nil
}

// dropEmptyHook deletes mangle PREROUTING, with the nft backend, when it
// is left without rules and with policy ACCEPT, and reports whether it
// did. iptables-nft creates that base chain for the first rule in it, and
// a base chain hooks the table into every packet's path even when it is
// empty (the datapath benchmark's "hook" state costs about a point of
// throughput), so leaving it would keep part of connscope's cost on the
// node after its rules are gone. The deletion changes no packet's fate:
// the chain has no rules and accepts, and iptables-nft creates it again
// for the next rule anyone adds. iptables-nft refuses a chain with
// another policy, the kernel one that still has rules (also one added
// meanwhile: the deletion is one transaction), and a failure only means
// the chain is someone's or already gone, so it is not an error. Legacy
// tables keep their hooks for as long as the namespace lives whatever
// their chains hold: nothing to do there.
func dropEmptyHook(h *handle, log *slog.Logger) bool {
	if h.backend != BackendNFT {
		return false
	}
	if err := h.ipt.DeleteChain(table, hookChain); err != nil {
		log.Debug("kept mangle "+hookChain, "where", h.String(), "reason", err)
		return false
	}
	return true
}

func isNotExist(err error) bool {
	var e *iptables.Error
	return errors.As(err, &e) && e.IsNotExist()
}

// ErrDrift is matched by errors.Is when Check finds the rules changed.
var ErrDrift = errors.New("netfilter rules differ from the policy")

// DriftError lists what Check found changed.
type DriftError struct {
	Policy   string
	Problems []string
}

func (e *DriftError) Error() string {
	return fmt.Sprintf("rules of policy %q changed: %s", e.Policy, strings.Join(e.Problems, "; "))
}

// Is makes errors.Is(err, ErrDrift) true.
func (e *DriftError) Is(target error) bool { return target == ErrDrift }

// Check is the canary: it reports, without changing anything, whether the
// policy's chain and its one jump are installed as Ensure leaves them.
// Someone flushing mangle (iptables -t mangle -F), deleting our jump or
// editing our chain makes it return a *DriftError (errors.Is ErrDrift);
// failing to run iptables returns another error.
//
// With the nft backend, Check first reads the namespace's nf_tables
// generation (Options.Generation): when it is the one read before the
// last Check that passed, no table of the namespace has changed since,
// and Check returns nil without running iptables. Listing the rules takes
// eight iptables runs (two families), about 130 ms of CPU on an empty
// node and more with kube-proxy's thousands of rules, every resync
// period; reading the generation is one netlink request.
func (m *Manager) Check() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	gen, genOK := m.generation()
	if genOK && m.checked && gen == m.checkedGen {
		m.checksSkipped++
		return nil
	}
	return m.check(gen, genOK)
}

// generation reads the nf_tables generation, when the manager uses it.
func (m *Manager) generation() (uint32, bool) {
	if m.gen == nil {
		return 0, false
	}
	g, err := m.gen()
	if err != nil {
		m.log.Debug("could not read the nf_tables generation: listing the rules", "err", err)
		return 0, false
	}
	return g, true
}

// check lists the rules of every family and compares them with the
// policy. gen is the generation read before the listing (when genOK): a
// change made while we list moves the generation past it, so the next
// Check lists again.
func (m *Manager) check(gen uint32, genOK bool) error {
	m.checked = false
	var problems []string
	var errs []error
	for _, f := range m.families {
		h, rs := m.handles[f], m.sets[f]
		p, err := m.checkFamily(h, rs)
		if err != nil {
			errs = append(errs, fmt.Errorf("check %s rules of policy %q in %s: %w", f, m.policy.Name, h, err))
		}
		for _, s := range p {
			problems = append(problems, fmt.Sprintf("%s (%s): %s", h.family, program(f, h.backend, false), s))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if len(problems) > 0 {
		return &DriftError{Policy: m.policy.Name, Problems: problems}
	}
	m.checked, m.checkedGen = genOK, gen
	return nil
}

func (m *Manager) checkFamily(h *handle, rs RuleSet) ([]string, error) {
	var problems []string
	exists, err := h.ipt.ChainExists(table, rs.Chain)
	if err != nil {
		return nil, err
	}
	if !exists {
		problems = append(problems, fmt.Sprintf("chain %s is missing", rs.Chain))
	} else {
		got, err := m.chainLines(h, rs.Chain)
		if err != nil {
			return nil, err
		}
		if want := m.expected(h.family, rs); !slices.Equal(got, want) {
			problems = append(problems, fmt.Sprintf("chain %s holds %d rules, not the %d of the policy", rs.Chain, len(got), len(want)))
			if len(got) == len(want) {
				problems[len(problems)-1] = fmt.Sprintf("rules of chain %s differ from the policy", rs.Chain)
			}
		}
	}
	jumps, err := jumpsTo(h, rs.Chain)
	if err != nil {
		return nil, err
	}
	switch len(jumps) {
	case 0:
		problems = append(problems, fmt.Sprintf("the jump from mangle %s to %s is missing", hookChain, rs.Chain))
	case 1:
		ok, err := h.ipt.Exists(table, hookChain, rs.Jump...)
		if err != nil {
			return nil, err
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("the jump from mangle %s to %s differs from the policy", hookChain, rs.Chain))
		}
	default:
		problems = append(problems, fmt.Sprintf("%d jumps from mangle %s to %s, not one", len(jumps), hookChain, rs.Chain))
	}
	return problems, nil
}

// Run keeps the rules installed until ctx ends: it Ensures them at once,
// removes what an earlier run of the same policy left (CleanupStale, after
// the new rules are in, so sampling never pauses), then Ensures again every
// resync period, which restores within one period whatever someone else
// flushed or deleted. A failed Ensure is retried sooner, from one second
// up to the period. Run leaves the rules in place when it returns; call
// Remove to take them out. It returns nil when ctx ends.
func (m *Manager) Run(ctx context.Context, resync time.Duration) error {
	if resync <= 0 {
		return fmt.Errorf("resync period %v: must be positive", resync)
	}
	const firstRetry = time.Second
	retry := firstRetry
	cleaned := false
	for {
		wait := resync
		if err := m.Ensure(); err != nil {
			m.log.Error("could not install the sampling rules; retrying", "err", err, "in", min(retry, resync))
			wait = min(retry, resync)
			retry *= 2
		} else {
			retry = firstRetry
			if !cleaned {
				if err := m.CleanupStale(); err != nil {
					m.log.Error("could not remove rules left by an earlier run of this policy", "err", err)
				}
				cleaned = true
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Remove deletes the policy's jumps from mangle PREROUTING, then its
// chain, in every family of the policy, and with nft that base chain if
// nothing else is left in it (dropEmptyHook). Like kube-proxy's
// CleanupLeftovers it carries on past errors and returns them joined;
// rules already gone are not an error. Rules of other policies and of
// other software stay. End Run first (cancel its context), or its next
// pass puts the rules back.
func (m *Manager) Remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checked = false
	var errs []error
	for _, f := range m.families {
		h := m.handles[f]
		jumps, err := jumpsTo(h, m.chain)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove %s rules of policy %q: %w", f, m.policy.Name, err))
		}
		for _, r := range jumps {
			if err := deleteRule(h, r); err != nil {
				errs = append(errs, fmt.Errorf("remove %s rules of policy %q: %w", f, m.policy.Name, err))
			}
		}
		if err := deleteChain(h, m.chain); err != nil {
			errs = append(errs, fmt.Errorf("remove %s rules of policy %q: %w", f, m.policy.Name, err))
		} else if dropEmptyHook(h, m.log) {
			m.log.Info("removed", "what", fmt.Sprintf("%s: deleted the empty mangle %s base chain", h, hookChain))
		}
		delete(m.written, f)
	}
	return errors.Join(errs...)
}

// CleanupStale removes what an earlier run of the same policy name left
// with other parameters: chains of this name (by the name part of the
// chain name, or by the policy's comment on their rules) other than the
// current chain, and jumps to them or carrying the policy's comment. It
// looks in both backends and both families: in the backend and families
// the manager does not use, everything of this policy name is stale (the
// host moved from iptables-legacy to iptables-nft, or the policy dropped
// IPv6). Programs that are missing are skipped there. Other policies'
// rules stay.
func (m *Manager) CleanupStale() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	removed, err := cleanup(m.opts, m.log, func(b Backend, f Family) bool {
		return b == m.detection.Backend && m.policy.hasFamily(f)
	}, func(b Backend, f Family) *handle {
		if b == m.detection.Backend {
			return m.handles[f]
		}
		return nil
	}, func(b Backend, f Family, s snapshot) ([]rule, []string) {
		keep := ""
		if b == m.detection.Backend && m.policy.hasFamily(f) {
			keep = m.chain
		}
		return policyRules(s, m.policy.Name, keep)
	}, func(b Backend, f Family) bool {
		return b != m.detection.Backend || !m.policy.hasFamily(f) // where the policy installs nothing
	})
	m.earlier = append(m.earlier, removed...)
	return err
}

// EarlierRuns lists what Ensure and CleanupStale found of earlier runs of
// the policy: the chain in place at Ensure's first look in each family
// (kept or rewritten), and what CleanupStale deleted. Empty when the
// policy started from nothing.
func (m *Manager) EarlierRuns() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.earlier)
}

// policyRules picks in s the chains of the named policy other than keep
// (by the name part of the chain name, or by the policy's comment on
// their rules), and the jumps to them or carrying the policy's comment.
func policyRules(s snapshot, name, keep string) ([]rule, []string) {
	var chains []string
	for _, c := range s.Chains {
		if c == keep || !strings.HasPrefix(c, chainPrefix) {
			continue
		}
		if strings.HasPrefix(c, namePrefix(name)) || chainHasComment(s, c, policyComment(name)) {
			chains = append(chains, c)
		}
	}
	var jumps []rule
	for _, r := range s.Rules[hookChain] {
		if slices.Contains(chains, r.Target) ||
			(strings.HasPrefix(r.Comment, policyComment(name)) && r.Target != keep) {
			jumps = append(jumps, r)
		}
	}
	return jumps, chains
}

func chainHasComment(s snapshot, chain, prefix string) bool {
	for _, r := range s.Rules[chain] {
		if strings.HasPrefix(r.Comment, prefix) {
			return true
		}
	}
	return false
}
