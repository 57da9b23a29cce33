package rules

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/connscope/connscope/internal/golden"
)

// These tests need root: see netns_test.go.

// TestConflictsRefuseAnotherPolicysBitOrGroup: with policy web (bit 3,
// group 5) installed, a policy of another name with bit 3 or group 5 is
// refused, naming web, its chain, what is shared and how to remove web's
// rules, and reading changes nothing; another bit and group, or an
// earlier run of web itself with other parameters, is not a conflict.
func TestConflictsRefuseAnotherPolicysBitOrGroup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		foreign(ns, b)
		mustEnsure(t, ns.manager(webPolicy(), b))
		before := ns.save(b)
		web := ChainName(webPolicy())

		policy := func(name string, bit int, group uint16) Policy {
			p := sshPolicy()
			p.Name, p.LabelBit, p.NFLOGGroup = name, bit, group
			return p
		}
		for _, tc := range []struct {
			name string
			p    Policy
			want []string // nil: no conflict
		}{
			{"same bit", policy("samebit", 3, 8), []string{`policy "samebit"`, `policy "web" (chain ` + web + ` in ` + program(IPv4, b, false) + ` (IPv4)) uses label bit 3`,
				program(IPv6, b, false) + " (IPv6)", "`connscope agent cleanup --policy web`"}},
			{"same group", policy("samegroup", 9, 5), []string{`policy "web" (chain ` + web, "uses NFLOG group 5"}},
			{"same bit and group", policy("twin", 3, 5), []string{"uses label bit 3 and NFLOG group 5"}},
			{"other bit and group", policy("ssh", 4, 6), nil},
			{"an earlier run of the same policy", policy("web", 3, 8), nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := ns.manager(tc.p, b).Conflicts()
				if tc.want == nil {
					if err != nil {
						t.Fatalf("Conflicts: %v", err)
					}
				} else {
					var ce *ConflictError
					if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) {
						t.Fatalf("Conflicts = %v, want a *ConflictError", err)
					}
					for _, w := range tc.want {
						if !strings.Contains(err.Error(), w) {
							t.Errorf("Conflicts = %q\ndoes not say %q", err, w)
						}
					}
				}
				if after := ns.save(b); after != before {
					t.Errorf("Conflicts changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
				}
			})
		}
	})
}

// TestConflictsSeeTheOtherBackend: the kernel runs the rules of
// iptables-nft and iptables-legacy side by side, so policy web installed
// through one backend conflicts with a policy of its bit, or of its group,
// on the other; a policy with a bit and group of its own does not.
func TestConflictsSeeTheOtherBackend(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		other := otherBackend(b)
		mustEnsure(t, ns.manager(webPolicy(), other))
		before := ns.save(other)
		for _, tc := range []struct {
			bit   int
			group uint16
			want  string
		}{
			{3, 8, "uses label bit 3"},
			{9, 5, "uses NFLOG group 5"},
		} {
			p := sshPolicy()
			p.Name, p.LabelBit, p.NFLOGGroup = "other", tc.bit, tc.group
			err := ns.manager(p, b).Conflicts()
			where := `policy "web" (chain ` + ChainName(webPolicy()) + ` in ` + program(IPv4, other, false) + ` (IPv4)) ` + tc.want
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), where) {
				t.Errorf("bit %d group %d through %s, web's rules through %s: Conflicts = %v, want a conflict saying %q", tc.bit, tc.group, b, other, err, where)
			}
		}
		if err := ns.manager(sshPolicy(), b).Conflicts(); err != nil {
			t.Errorf("a policy with its own bit and group: Conflicts = %v", err)
		}
		if after := ns.save(other); after != before {
			t.Errorf("Conflicts changed the other backend's rules:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

// TestCleanupPolicyRemovesAKilledPolicysLeftovers: the rules a killed
// agent of policy old left (bit 3, group 5) make a new policy with the
// same bit and group conflict; CleanupPolicy(old) removes them in both
// backends and nothing else (policy ssh stays), after which there is no
// conflict.
func TestCleanupPolicyRemovesAKilledPolicysLeftovers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		old := webPolicy()
		old.Name = "old"
		mustEnsure(t, ns.manager(old, b))
		mustEnsure(t, ns.manager(old, otherBackend(b)))
		mustEnsure(t, ns.manager(sshPolicy(), b))

		fresh := old
		fresh.Name = "new"
		m := ns.manager(fresh, b)
		if err := m.Conflicts(); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `policy "old"`) {
			t.Fatalf("Conflicts with old's leftovers = %v", err)
		}

		removed, err := CleanupPolicy(ns.options(BackendAuto), "old")
		if err != nil {
			t.Fatalf("CleanupPolicy: %v", err)
		}
		// A jump and a chain per family and backend, besides the nft base
		// chains that no other policy uses any more (dropEmptyHook).
		rulesAndChains := slices.DeleteFunc(slices.Clone(removed), func(r string) bool { return strings.Contains(r, "base chain") })
		if len(rulesAndChains) != 8 {
			t.Errorf("CleanupPolicy reports %d removals of rules and chains, want 8:\n%s", len(rulesAndChains), strings.Join(removed, "\n"))
		}
		golden.Check(t, "ssh-only", ns.save(b))
		if other := ns.saveAll(otherBackend(b)); strings.Contains(other, "CONNSCOPE") {
			t.Errorf("old's rules are left in the other backend:\n%s", other)
		}
		if err := m.Conflicts(); err != nil {
			t.Errorf("Conflicts after the cleanup: %v", err)
		}
		if removed, err := CleanupPolicy(ns.options(BackendAuto), "old"); err != nil || len(removed) != 0 {
			t.Errorf("second CleanupPolicy: %v, %q", err, removed)
		}
	})
}
