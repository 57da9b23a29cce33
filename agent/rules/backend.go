package rules

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Backend is the kernel interface iptables drives: nf_tables (iptables-nft)
// or the legacy x_tables (iptables-legacy). Rules of one are invisible to
// the other's tools, though the kernel runs both.
type Backend string

// The backends, and "auto": choose as the host uses.
const (
	BackendAuto   Backend = "auto"
	BackendNFT    Backend = "nft"
	BackendLegacy Backend = "legacy"
)

var allBackends = []Backend{BackendNFT, BackendLegacy}

// ParseBackend reads "auto", "nft" or "legacy" (a command-line flag).
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(strings.ToLower(strings.TrimSpace(s))); b {
	case "", BackendAuto:
		return BackendAuto, nil
	case BackendNFT, BackendLegacy:
		return b, nil
	}
	return "", fmt.Errorf("iptables backend %q: use auto, nft or legacy", s)
}

// Options configure how the rules are written. The zero value runs the
// iptables found in PATH, chooses the backend as the host uses, and logs
// nothing.
type Options struct {
	// Backend is auto (the default), nft or legacy.
	Backend Backend
	// LookPath finds the program to run for a name: iptables-nft,
	// iptables-legacy, ip6tables-nft, ip6tables-legacy, or one of those
	// with "-save". Nil means exec.LookPath. Tests point it at wrappers
	// that run the program inside a network namespace of their own.
	LookPath func(name string) (string, error)
	// Logger receives what the manager repaired or could not do. Nil
	// discards.
	Logger *slog.Logger
	// LockWait is how long iptables waits for the xtables lock (legacy)
	// before failing; 0 means 5 seconds.
	LockWait time.Duration
	// Generation, with the nft backend, returns the nf_tables ruleset
	// generation of the namespace the iptables programs act on, so that
	// Manager.Check runs no program while it is unchanged since the last
	// check that passed. Nil means NFTGeneration when LookPath is nil (the
	// programs act on the manager's own namespace), and no shortcut when
	// LookPath is set (tests set both). Not used with iptables-legacy,
	// whose changes the generation does not count.
	Generation func() (uint32, error)
}

// generation is the ruleset generation function for backend b, or nil.
func (o Options) generation(b Backend) func() (uint32, error) {
	switch {
	case b != BackendNFT:
		return nil
	case o.Generation != nil:
		return o.Generation
	case o.LookPath == nil:
		return NFTGeneration
	}
	return nil
}

func (o Options) lookPath(name string) (string, error) {
	if o.LookPath != nil {
		return o.LookPath(name)
	}
	return exec.LookPath(name)
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// program is the iptables program of a family and backend, e.g.
// ip6tables-legacy; with save it is the matching -save program.
func program(f Family, b Backend, save bool) string {
	name := "iptables-" + string(b)
	if f == IPv6 {
		name = "ip6tables-" + string(b)
	}
	if save {
		name += "-save"
	}
	return name
}

// handle is a go-iptables handle for one family and backend.
type handle struct {
	family  Family
	backend Backend
	ipt     *iptables.IPTables
}

func (h *handle) String() string {
	return fmt.Sprintf("%s (%s)", program(h.family, h.backend, false), h.family)
}

// newHandle opens the iptables program of a family and backend.
func newHandle(o Options, f Family, b Backend) (*handle, error) {
	name := program(f, b, false)
	path, err := o.lookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s not found: %w (install iptables 1.8 or later: apt-get install iptables)", name, err)
	}
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	wait := o.LockWait
	if wait <= 0 {
		wait = 5 * time.Second
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path), iptables.Timeout(int((wait+time.Second-1)/time.Second)))
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	return &handle{family: f, backend: b, ipt: ipt}, nil
}

// save runs <program>-save and returns its output. Legacy is read without
// "-t mangle": naming a legacy table makes the kernel create it, and a
// reader should change nothing.
func save(o Options, f Family, b Backend) (string, error) {
	name := program(f, b, true)
	path, err := o.lookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: %w", name, err)
	}
	var args []string
	if b == BackendNFT {
		args = []string{"-t", table}
	}
	return runCommand(path, name, args...)
}

// saveAll runs <program>-save over every table (for rule counts).
func saveAll(o Options, f Family, b Backend) (string, error) {
	name := program(f, b, true)
	path, err := o.lookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found: %w", name, err)
	}
	return runCommand(path, name)
}

func runCommand(path, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		return "", fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return stdout.String(), nil
}

// Detection says which backend was chosen and why.
type Detection struct {
	Backend Backend
	Reason  string
}

// kubeletChains are created by kubelet (1.17+) in the mangle table of the
// backend the node uses; iptables-wrappers looks for them first.
var kubeletChains = regexp.MustCompile(`(?m)^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) `)

// DetectBackend chooses the backend as kube-proxy's iptables-wrappers
// does: the one whose mangle table holds kubelet's KUBE-IPTABLES-HINT or
// KUBE-KUBELET-CANARY chain; else the one with more rules (iptables-save
// lines starting with '-', both families), nft on a tie. A backend whose
// save program is missing or fails is not chosen. With opts.Backend set to
// nft or legacy it only checks that this backend works.
func DetectBackend(opts Options) (Detection, error) {
	want := opts.Backend
	if want == "" {
		want = BackendAuto
	}
	if want != BackendAuto && want != BackendNFT && want != BackendLegacy {
		return Detection{}, fmt.Errorf("iptables backend %q: use auto, nft or legacy", want)
	}

	type probe struct {
		out   [2]string
		ok    bool
		errs  []error
		lines int
	}
	probes := map[Backend]*probe{}
	for _, b := range allBackends {
		if want != BackendAuto && b != want {
			continue
		}
		p := &probe{}
		for i, f := range allFamilies {
			out, err := saveAll(opts, f, b)
			if err != nil {
				p.errs = append(p.errs, err)
				continue
			}
			p.ok = true
			p.out[i] = out
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "-") {
					p.lines++
				}
			}
		}
		probes[b] = p
	}

	if want != BackendAuto {
		p := probes[want]
		if !p.ok {
			return Detection{}, unusable(p.errs)
		}
		return Detection{Backend: want, Reason: "chosen by configuration"}, nil
	}

	nft, legacy := probes[BackendNFT], probes[BackendLegacy]
	switch {
	case !nft.ok && !legacy.ok:
		return Detection{}, unusable(append(nft.errs, legacy.errs...))
	case !legacy.ok:
		return Detection{Backend: BackendNFT, Reason: fmt.Sprintf("iptables-legacy does not work (%v)", errors.Join(legacy.errs...))}, nil
	case !nft.ok:
		return Detection{Backend: BackendLegacy, Reason: fmt.Sprintf("iptables-nft does not work (%v)", errors.Join(nft.errs...))}, nil
	}
	for _, b := range allBackends {
		for i, f := range allFamilies {
			if m := kubeletChains.FindStringSubmatch(mangleSection(probes[b].out[i])); m != nil {
				return Detection{Backend: b, Reason: fmt.Sprintf("kubelet's %s chain is in %s's mangle table", m[1], program(f, b, false))}, nil
			}
		}
	}
	if legacy.lines > nft.lines {
		return Detection{Backend: BackendLegacy, Reason: fmt.Sprintf("iptables-legacy holds more rules (%d) than iptables-nft (%d)", legacy.lines, nft.lines)}, nil
	}
	return Detection{Backend: BackendNFT, Reason: fmt.Sprintf("iptables-nft holds as many rules or more (%d) than iptables-legacy (%d)", nft.lines, legacy.lines)}, nil
}

// Capability numbers of capabilities(7).
const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// checkLegacyCapabilities fails when this process, which runs iptables,
// lacks a capability iptables-legacy needs: CAP_NET_ADMIN, and CAP_NET_RAW
// for the raw socket it talks to the kernel through. iptables-legacy-save
// needs no socket while the namespace has no legacy table, so detection
// passes without CAP_NET_RAW, and every write would then fail with
// "Permission denied (you must be root)". status is /proc/self/status; one
// that cannot be read or lacks CapEff is not an error.
func checkLegacyCapabilities(status string) error {
	var eff uint64
	found := false
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil
			}
			eff, found = n, true
		}
	}
	if !found {
		return nil
	}
	hasAdmin, hasRaw := eff&(1<<capNetAdmin) != 0, eff&(1<<capNetRaw) != 0
	switch {
	case hasAdmin && !hasRaw:
		return errors.New("iptables-legacy needs CAP_NET_RAW (it talks to the kernel through a raw socket), and this process has CAP_NET_ADMIN without it: " +
			"add CAP_NET_RAW, or use the nft backend (--backend nft), which needs CAP_NET_ADMIN only")
	case !hasAdmin && !hasRaw:
		return errors.New("iptables-legacy needs CAP_NET_ADMIN and CAP_NET_RAW, and this process has neither: run the agent as root or grant both")
	case !hasAdmin:
		return errors.New("iptables-legacy needs CAP_NET_ADMIN, and this process lacks it: run the agent as root or grant CAP_NET_ADMIN and CAP_NET_RAW")
	}
	return nil
}

// mangleSection cuts the mangle table out of iptables-save output.
func mangleSection(out string) string {
	i := strings.Index(out, "*"+table+"\n")
	if i < 0 {
		return ""
	}
	out = out[i:]
	if j := strings.Index(out, "\nCOMMIT"); j >= 0 {
		out = out[:j]
	}
	return out
}

// ErrNoIptables is matched by errors.Is when no backend works.
var ErrNoIptables = errors.New("no working iptables")

// unusable explains why no backend works and what to do about it.
func unusable(errs []error) error {
	joined := errors.Join(errs...)
	msg := joined.Error()
	var hint string
	switch {
	case strings.Contains(msg, "ermission denied") || strings.Contains(msg, "Operation not permitted") || strings.Contains(msg, "must be root"):
		hint = "run the agent as root or with CAP_NET_ADMIN (and CAP_NET_RAW for iptables-legacy)"
	case strings.Contains(msg, "not found") || strings.Contains(msg, "no such file"):
		hint = "install iptables 1.8 or later, which provides iptables-nft and iptables-legacy (Debian: apt-get install iptables)"
	default:
		hint = "check that the kernel has nf_tables or ip_tables and that iptables runs by hand"
	}
	return fmt.Errorf("%w: %s: %s", ErrNoIptables, hint, strings.ReplaceAll(msg, "\n", "; "))
}
