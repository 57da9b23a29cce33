package rules

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// CleanupAll removes everything connscope wrote, in both families and both
// backends (connscope agent cleanup): every rule in the mangle table that
// jumps to a CONNSCOPE- chain or carries a "connscope " comment, then every
// CONNSCOPE- chain, and with nft the mangle PREROUTING base chain when
// that leaves it empty (dropEmptyHook). It reads each backend with its
// -save program first and runs iptables only where something of connscope
// is found, so a backend the host does not use is left as it was (no
// legacy table gets created).
// It carries on past errors and joins them; it fails with ErrNoIptables
// only when no backend could be read at all. It returns what it removed,
// one line each.
func CleanupAll(opts Options) ([]string, error) {
	log := opts.logger()
	return cleanup(opts, log, func(Backend, Family) bool { return false }, func(Backend, Family) *handle { return nil },
		func(_ Backend, _ Family, s snapshot) ([]rule, []string) {
			var chains []string
			for _, c := range s.Chains {
				if strings.HasPrefix(c, chainPrefix) {
					chains = append(chains, c)
				}
			}
			var jumps []rule
			for _, c := range s.Chains {
				if strings.HasPrefix(c, chainPrefix) {
					continue // flushed with the chain
				}
				for _, r := range s.Rules[c] {
					if strings.HasPrefix(r.Target, chainPrefix) || strings.HasPrefix(r.Comment, commentPrefix) {
						jumps = append(jumps, r)
					}
				}
			}
			return jumps, chains
		},
		func(Backend, Family) bool { return true })
}

// CleanupPolicy removes the rules and chains of one policy name, in both
// families and both backends (connscope agent cleanup --policy NAME): its
// chains, found by their name or their rules' "connscope policy NAME:"
// comments, and the jumps to them or with such a comment. Other policies'
// rules stay. Like CleanupAll it reads first, runs iptables only where
// something of the policy is found, and returns what it removed.
func CleanupPolicy(opts Options, name string) ([]string, error) {
	if name == "" {
		return nil, errors.New("cleanup: no policy name")
	}
	return cleanup(opts, opts.logger(), func(Backend, Family) bool { return false }, func(Backend, Family) *handle { return nil },
		func(_ Backend, _ Family, s snapshot) ([]rule, []string) { return policyRules(s, name, "") },
		func(Backend, Family) bool { return true })
}

// cleanup reads the mangle table of every backend and family, lets choose
// pick the rules and chains to remove, and removes them: the rules first,
// then the chains (flushed, then deleted).
//
// required says for which backend and family a failure to read is an
// error; elsewhere a missing or failing program only means there is
// nothing to clean. handleFor may return an open handle to reuse.
// dropHook says where, once something was removed, the mangle PREROUTING
// base chain is deleted too if that left it empty (dropEmptyHook): not
// where the caller is about to install rules again.
func cleanup(opts Options, log *slog.Logger,
	required func(Backend, Family) bool,
	handleFor func(Backend, Family) *handle,
	choose func(Backend, Family, snapshot) ([]rule, []string),
	dropHook func(Backend, Family) bool,
) ([]string, error) {
	var (
		removed  []string
		errs     []error
		readErrs []error
		readOK   bool
	)
	for _, b := range allBackends {
		for _, f := range allFamilies {
			where := fmt.Sprintf("%s (%s)", program(f, b, false), f)
			out, err := save(opts, f, b)
			if err != nil {
				if required(b, f) {
					errs = append(errs, fmt.Errorf("read %s: %w", where, err))
				} else {
					log.Debug("skipping a backend that cannot be read", "where", where, "err", err)
				}
				readErrs = append(readErrs, err)
				continue
			}
			readOK = true
			s, found, err := parseSave(out)
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", where, err))
				continue
			}
			if !found {
				continue
			}
			jumps, chains := choose(b, f, s)
			if len(jumps) == 0 && len(chains) == 0 {
				continue
			}
			h := handleFor(b, f)
			if h == nil {
				if h, err = newHandle(opts, f, b); err != nil {
					errs = append(errs, fmt.Errorf("clean up %s: %w", where, err))
					continue
				}
			}
			for _, r := range jumps {
				if err := deleteRule(h, r); err != nil {
					errs = append(errs, fmt.Errorf("clean up %s: %w", where, err))
					continue
				}
				removed = append(removed, fmt.Sprintf("%s: deleted %s", where, r.Line))
			}
			for _, c := range chains {
				if err := deleteChain(h, c); err != nil {
					errs = append(errs, fmt.Errorf("clean up %s: %w (is a rule connscope did not write jumping to it?)", where, err))
					continue
				}
				removed = append(removed, fmt.Sprintf("%s: deleted chain %s", where, c))
			}
			if dropHook(b, f) && dropEmptyHook(h, log) {
				removed = append(removed, fmt.Sprintf("%s: deleted the empty mangle %s base chain", where, hookChain))
			}
		}
	}
	for _, r := range removed {
		log.Info("removed", "what", r)
	}
	if !readOK {
		return removed, unusable(readErrs)
	}
	return removed, errors.Join(errs...)
}
