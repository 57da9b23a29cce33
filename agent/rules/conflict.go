package rules

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrConflict is matched by errors.Is when another connscope policy's
// rules use the label bit or the NFLOG group of the manager's policy.
var ErrConflict = errors.New("another connscope policy uses the same label bit or NFLOG group")

// ConflictError names the other policies whose rules share the policy's
// label bit or NFLOG group.
type ConflictError struct {
	Policy    string
	Conflicts []Conflict
}

// Conflict is one chain of another policy sharing a label bit or group.
type Conflict struct {
	// Where is the program and family, e.g. "iptables-nft (IPv4)".
	Where string
	// Chain is the other policy's chain; OtherPolicy its name as its rule
	// comments give it ("" when they give none).
	Chain, OtherPolicy string
	// What is shared: "label bit 3" and/or "NFLOG group 5".
	What []string
	// Group is the NFLOG group the chain logs to, -1 when it logs to none.
	Group int
}

func (e *ConflictError) Error() string {
	var b strings.Builder
	names := []string{}
	for i, c := range e.Conflicts {
		if i > 0 {
			b.WriteString("; ")
		}
		who := "a connscope policy of unknown name"
		if c.OtherPolicy != "" {
			who = fmt.Sprintf("policy %q", c.OtherPolicy)
			if !slices.Contains(names, c.OtherPolicy) {
				names = append(names, c.OtherPolicy)
			}
		}
		fmt.Fprintf(&b, "%s (chain %s in %s) uses %s", who, c.Chain, c.Where, strings.Join(c.What, " and "))
	}
	remove := "`connscope agent cleanup` (every policy)"
	if len(names) > 0 {
		var cmds []string
		for _, n := range names {
			cmds = append(cmds, "`connscope agent cleanup --policy "+n+"`")
		}
		remove = strings.Join(cmds, ", ")
	}
	return fmt.Sprintf("policy %q: %s: %s; two policies sharing a label bit or an NFLOG group mix their samples: "+
		"choose another --label-bit or --nflog-group, or, if that policy's agent no longer runs (a killed agent left its rules), remove its rules with %s",
		e.Policy, ErrConflict.Error(), b.String(), remove)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Conflicts reads (iptables-save, which changes nothing) the mangle tables
// of both families and returns a *ConflictError when a connscope chain of
// another policy labels or matches the policy's label bit or logs to its
// NFLOG group: the two would log each other's connections, or every packet
// twice. It reads the other backend too: the kernel runs the rules of
// iptables-nft and iptables-legacy side by side, so an agent on the other
// backend (another host tool's choice, or an override) conflicts as much.
// Chains of the same policy name (an earlier run, which CleanupStale
// replaces) are not conflicts. Call it before the first Ensure. A family
// the policy does not use and whose table cannot be read is skipped, as is
// the other backend when its programs are missing or fail (a host without
// them has no rules there); reading it loads no kernel module (the legacy
// save lists only the tables already loaded).
func (m *Manager) Conflicts() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	bit := strconv.Itoa(m.policy.LabelBit)
	group := strconv.Itoa(int(m.policy.NFLOGGroup))
	var found []Conflict
	var errs []error
	for _, b := range allBackends {
		inUse := b == m.detection.Backend
		for _, f := range allFamilies {
			where := fmt.Sprintf("%s (%s)", program(f, b, false), f)
			out, err := save(m.opts, f, b)
			if err == nil {
				var s snapshot
				var ok bool
				if s, ok, err = parseSave(out); err == nil && !ok {
					continue
				} else if err == nil {
					found = append(found, conflictsIn(s, m.policy.Name, bit, group, where)...)
					continue
				}
			}
			if inUse && m.policy.hasFamily(f) {
				errs = append(errs, fmt.Errorf("look for other connscope policies in %s: %w", where, err))
			} else {
				m.log.Debug("cannot read rules the policy does not write", "where", where, "err", err)
			}
		}
	}
	if len(found) > 0 {
		return &ConflictError{Policy: m.policy.Name, Conflicts: found}
	}
	return errors.Join(errs...)
}

// conflictsIn lists the connscope chains of other policies than name in
// s whose rules use the label bit or the NFLOG group.
func conflictsIn(s snapshot, name, bit, group, where string) []Conflict {
	var out []Conflict
	for _, c := range s.Chains {
		if !strings.HasPrefix(c, chainPrefix) || strings.HasPrefix(c, namePrefix(name)) || chainHasComment(s, c, policyComment(name)) {
			continue
		}
		cf := Conflict{Where: where, Chain: c, Group: -1}
		for _, r := range s.Rules[c] {
			if cf.OtherPolicy == "" {
				cf.OtherPolicy = commentPolicy(r.Comment)
			}
			if v, ok := optionValue(r.Spec, "--nflog-group"); ok {
				if g, err := strconv.ParseUint(v, 10, 16); err == nil {
					cf.Group = int(g)
				}
			}
			if v, ok := optionValue(r.Spec, "--label"); ok && v == bit && !slices.Contains(cf.What, "label bit "+bit) {
				cf.What = append(cf.What, "label bit "+bit)
			}
			if v, ok := optionValue(r.Spec, "--nflog-group"); ok && v == group && !slices.Contains(cf.What, "NFLOG group "+group) {
				cf.What = append(cf.What, "NFLOG group "+group)
			}
		}
		if len(cf.What) > 0 {
			out = append(out, cf)
		}
	}
	return out
}

// commentPolicy is the policy name in a comment "connscope policy NAME: ...",
// or "".
func commentPolicy(comment string) string {
	rest, ok := strings.CutPrefix(comment, commentPrefix+"policy ")
	if !ok {
		return ""
	}
	name, _, ok := strings.Cut(rest, ":")
	if !ok {
		return ""
	}
	return name
}

// optionValue is the word after the first opt in a rulespec.
func optionValue(spec []string, opt string) (string, bool) {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == opt {
			return spec[i+1], true
		}
	}
	return "", false
}
