package rules

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/golden"
	"github.com/connscope/connscope/internal/netnstest"
)

// These tests need root: each runs in a network namespace of its own (see
// netns_test.go) and compares the whole mangle table, both families, with
// a golden file after each step. The nft and legacy runs share the golden
// files: both backends must print exactly the same rules.

// webPolicy covers both families and every filter.
func webPolicy() Policy {
	return Policy{
		Name:         "web",
		Probability:  0.0001,
		PacketCap:    10,
		LabelBit:     3,
		NFLOGGroup:   5,
		CopyRange:    128,
		Ports:        []uint16{443, 80},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")},
		Interfaces:   []string{"eth0"},
		Families:     []Family{IPv4, IPv6},
	}
}

// sshPolicy is a second policy: another name, bit and group, IPv4 only.
func sshPolicy() Policy {
	return Policy{
		Name:        "ssh",
		Probability: 0.5,
		PacketCap:   5,
		LabelBit:    4,
		NFLOGGroup:  6,
		CopyRange:   96,
		Ports:       []uint16{22},
		Families:    []Family{IPv4},
	}
}

func mustEnsure(t *testing.T, m *Manager) {
	t.Helper()
	if err := m.Ensure(); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
}

func mustCheck(t *testing.T, m *Manager) {
	t.Helper()
	if err := m.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// wantDrift asserts that Check reports drift mentioning each of want.
func wantDrift(t *testing.T, m *Manager, want ...string) {
	t.Helper()
	err := m.Check()
	var d *DriftError
	if !errors.As(err, &d) || !errors.Is(err, ErrDrift) {
		t.Fatalf("Check = %v, want a *DriftError", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Check = %q, does not say %q", err, w)
		}
	}
}

func TestEnsureInstallsTheExactRules(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))
		mustCheck(t, m)
		if other := ns.saveAll(otherBackend(b)); strings.Contains(other, "CONNSCOPE") {
			t.Errorf("rules appeared in the other backend:\n%s", other)
		}
	})
}

func TestEnsureTwiceWritesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		writes := m.writes
		mustEnsure(t, m)
		mustEnsure(t, m)
		if m.writes != writes {
			t.Errorf("Ensure on installed rules wrote %d times", m.writes-writes)
		}
		golden.Check(t, "install", ns.save(b))

		// A new process (no memory of what it wrote) finds the rules as
		// it renders them: iptables prints them back the same.
		fresh := ns.manager(webPolicy(), b)
		mustCheck(t, fresh)
		mustEnsure(t, fresh)
		if fresh.writes != 0 {
			t.Errorf("a fresh manager rewrote installed rules (%d writes): the rendering differs from iptables' listing", fresh.writes)
		}
		golden.Check(t, "install", ns.save(b))
	})
}

func TestCheckNoticesFlushAndEnsureRestores(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		chain := m.Chain()

		// Someone flushes our chain in one family.
		ns.ipt(b, IPv4, "-t", "mangle", "-F", chain)
		wantDrift(t, m, "IPv4", "chain "+chain+" holds 0 rules, not the 3 of the policy")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))
		mustCheck(t, m)

		// Someone flushes the whole mangle table, and deletes our chain.
		ns.iptBoth(b, "-t", "mangle", "-F")
		ns.iptBoth(b, "-t", "mangle", "-X", chain)
		wantDrift(t, m, "IPv4", "IPv6", "chain "+chain+" is missing", "jump from mangle PREROUTING to "+chain+" is missing")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))
		mustCheck(t, m)

		// Someone adds a rule to our chain.
		ns.ipt(b, IPv6, "-t", "mangle", "-A", chain, "-j", "RETURN")
		wantDrift(t, m, "IPv6", "holds 4 rules, not the 3")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))

		// Someone edits a rule of our chain in place.
		ns.ipt(b, IPv4, "-t", "mangle", "-R", chain, "1", "-s", "10.0.0.0/16", "-j", "RETURN")
		wantDrift(t, m, "IPv4", "rules of chain "+chain+" differ")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))
		mustCheck(t, m)
	})
}

// TestCheckListsTheRulesOnlyWhenTheRulesetChanged: with the nft backend,
// a Check after one that passed runs no iptables program while the
// namespace's nf_tables generation is unchanged, and lists the rules again
// after any change, ours or not; with iptables-legacy (whose changes the
// generation does not count) every Check lists the rules.
func TestCheckListsTheRulesOnlyWhenTheRulesetChanged(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m) // installs, then lists once to know the generation
		mustCheck(t, m)
		mustCheck(t, m)
		mustCheck(t, m)
		wantSkipped := 3
		if b == BackendLegacy {
			wantSkipped = 0
		}
		if m.checksSkipped != wantSkipped {
			t.Errorf("%d of 3 Checks ran no iptables, want %d", m.checksSkipped, wantSkipped)
		}

		// A change elsewhere: Check lists again, finds ours in place.
		ns.ipt(b, IPv4, "-t", "filter", "-N", "SOMEONE-ELSE")
		mustCheck(t, m)
		if m.checksSkipped != wantSkipped {
			t.Errorf("a Check after a change ran no iptables")
		}
		// A flush of our chain is noticed (the generation moved).
		ns.ipt(b, IPv6, "-t", "mangle", "-F", m.Chain())
		wantDrift(t, m, "IPv6", "holds 0 rules")
		wantDrift(t, m, "IPv6", "holds 0 rules") // and again: a failed Check is no reference
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))
		// An Ensure that finds everything in place is a Check too.
		mustEnsure(t, m)
		skipped := m.checksSkipped
		mustCheck(t, m)
		if b == BackendNFT && m.checksSkipped != skipped+1 {
			t.Errorf("a Check right after an Ensure that changed nothing ran iptables")
		}
	})
}

func TestEnsureRestoresTheJump(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		jump := Rules(webPolicy(), IPv4).Jump

		// Deleted.
		ns.iptBoth(b, append([]string{"-t", "mangle", "-D", "PREROUTING"}, jump...)...)
		wantDrift(t, m, "jump from mangle PREROUTING to "+m.Chain()+" is missing")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))

		// Duplicated.
		ns.ipt(b, IPv4, append([]string{"-t", "mangle", "-A", "PREROUTING"}, jump...)...)
		wantDrift(t, m, "2 jumps from mangle PREROUTING")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))

		// Replaced by a jump without our comment.
		ns.ipt(b, IPv6, append([]string{"-t", "mangle", "-D", "PREROUTING"}, jump...)...)
		ns.ipt(b, IPv6, "-t", "mangle", "-A", "PREROUTING", "-j", m.Chain())
		wantDrift(t, m, "IPv6", "differs from the policy")
		mustEnsure(t, m)
		golden.Check(t, "install", ns.save(b))
		mustCheck(t, m)
	})
}

// foreign adds rules of someone else to mangle PREROUTING and to a chain
// of theirs, in both families.
func foreign(ns *testNS, b Backend) {
	ns.ipt(b, IPv4, "-t", "mangle", "-A", "PREROUTING", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "not connscope", "-j", "RETURN")
	ns.ipt(b, IPv6, "-t", "mangle", "-A", "PREROUTING", "-s", "2001:db8::1/128", "-m", "comment", "--comment", "not connscope", "-j", "RETURN")
	ns.iptBoth(b, "-t", "mangle", "-N", "OTHER-CHAIN")
	ns.iptBoth(b, "-t", "mangle", "-A", "OTHER-CHAIN", "-p", "udp", "-j", "RETURN")
	ns.iptBoth(b, "-t", "mangle", "-A", "PREROUTING", "-j", "OTHER-CHAIN")
}

func TestRemoveLeavesOthersRulesAlone(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		foreign(ns, b)
		golden.Check(t, "foreign", ns.save(b))
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		golden.Check(t, "install-with-foreign", ns.save(b))

		if err := m.Remove(); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		golden.Check(t, "foreign", ns.save(b))
		if err := m.Remove(); err != nil {
			t.Errorf("Remove of removed rules: %v", err)
		}
		wantDrift(t, m, "is missing")
	})
}

// hooked reports whether the namespace's nf_tables has a mangle PREROUTING
// base chain in family f: the hook iptables-nft creates for the first rule
// there (iptables-nft-save prints the built-in chains either way, so nft
// tells).
func hooked(ns *testNS, f Family) bool {
	ns.t.Helper()
	netnstest.NeedTools(ns.t, "apt-get install nftables", "nft")
	fam := "ip"
	if f == IPv6 {
		fam = "ip6"
	}
	_, err := ns.Run(time.Minute, "nft", "list", "chain", fam, "mangle", "PREROUTING")
	return err == nil
}

func TestRemoveUnhooksTheTableWhenNothingElseUsesIt(t *testing.T) {
	ns := newTestNS(t)
	m := ns.manager(webPolicy(), BackendNFT)
	mustEnsure(t, m)
	for _, f := range allFamilies {
		if !hooked(ns, f) {
			t.Fatalf("%s: no mangle PREROUTING base chain after Ensure", f)
		}
	}
	if err := m.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, f := range allFamilies {
		if hooked(ns, f) {
			t.Errorf("%s: the empty mangle PREROUTING base chain is left, still hooked into every packet's path", f)
		}
	}
	if s := ns.save(BackendNFT); strings.Contains(s, "\n-A ") || strings.Contains(s, "CONNSCOPE") {
		t.Errorf("rules left:\n%s", s)
	}

	// Someone else's policy on the chain: it stays, as it was.
	mustEnsure(t, m)
	ns.iptBoth(BackendNFT, "-t", "mangle", "-P", "PREROUTING", "DROP")
	if err := m.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, f := range allFamilies {
		if !hooked(ns, f) {
			t.Errorf("%s: a mangle PREROUTING base chain with policy DROP was deleted", f)
		}
	}
	if s := ns.save(BackendNFT); strings.Count(s, ":PREROUTING DROP") != 2 {
		t.Errorf("the DROP policies changed:\n%s", s)
	}
}

func TestCleanupAllUnhooksTheTableItLeavesEmpty(t *testing.T) {
	ns := newTestNS(t)
	mustEnsure(t, ns.manager(webPolicy(), BackendNFT))
	removed, err := CleanupAll(ns.options(BackendAuto))
	if err != nil {
		t.Fatalf("CleanupAll: %v", err)
	}
	for _, f := range allFamilies {
		if hooked(ns, f) {
			t.Errorf("%s: the empty mangle PREROUTING base chain is left", f)
		}
	}
	// A jump and a chain in each family, and each family's base chain.
	if n := len(removed); n != 6 || !strings.Contains(strings.Join(removed, "\n"), "deleted the empty mangle PREROUTING base chain") {
		t.Errorf("CleanupAll reports %d removals, want 6 with the base chains:\n%s", n, strings.Join(removed, "\n"))
	}
}

func TestRemoveCarriesOnPastErrors(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		// A rule we did not write jumps to our chain from another chain,
		// so the chain cannot be deleted; the other family still goes.
		ns.ipt(b, IPv4, "-t", "mangle", "-A", "INPUT", "-j", m.Chain())
		err := m.Remove()
		if err == nil || !strings.Contains(err.Error(), "IPv4") || !strings.Contains(err.Error(), "delete chain "+m.Chain()) {
			t.Fatalf("Remove = %v, want an error about deleting the IPv4 chain", err)
		}
		if s := ns.save(b); strings.Contains(strings.SplitN(s, "== IPv6", 2)[1], "CONNSCOPE") {
			t.Errorf("IPv6 rules left:\n%s", s)
		}
		if s := ns.save(b); hasLine(s, "-A PREROUTING") {
			t.Errorf("a jump is left:\n%s", s)
		}
	})
}

func TestTwoPoliciesCoexistAndRemoveOnlyTheirOwn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		web, ssh := ns.manager(webPolicy(), b), ns.manager(sshPolicy(), b)
		mustEnsure(t, web)
		mustEnsure(t, ssh)
		mustEnsure(t, web)
		golden.Check(t, "two-policies", ns.save(b))
		mustCheck(t, web)
		mustCheck(t, ssh)

		if err := web.Remove(); err != nil {
			t.Fatalf("Remove web: %v", err)
		}
		golden.Check(t, "ssh-only", ns.save(b))
		mustCheck(t, ssh)
		if err := ssh.CleanupStale(); err != nil {
			t.Fatalf("CleanupStale ssh: %v", err)
		}
		golden.Check(t, "ssh-only", ns.save(b))
	})
}

func TestCleanupStaleRemovesEarlierRunsOfTheSamePolicy(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		foreign(ns, b)
		// An earlier run of "web" with another bit and group ...
		old := webPolicy()
		old.LabelBit, old.NFLOGGroup = 1, 1
		mustEnsure(t, ns.manager(old, b))
		// ... one in the other backend (the host switched) ...
		mustEnsure(t, ns.manager(old, otherBackend(b)))
		// ... a chain of an older naming scheme, found by its comment ...
		ns.iptBoth(b, "-t", "mangle", "-N", "CONNSCOPE-WEB")
		ns.iptBoth(b, "-t", "mangle", "-A", "CONNSCOPE-WEB", "-m", "comment", "--comment", "connscope policy web: old", "-j", "RETURN")
		ns.iptBoth(b, "-t", "mangle", "-A", "PREROUTING", "-m", "comment", "--comment", "connscope policy web: sample new TCP connections", "-j", "CONNSCOPE-WEB")
		// ... and another policy, which must stay, as must "web2".
		mustEnsure(t, ns.manager(sshPolicy(), b))
		web2 := webPolicy()
		web2.Name, web2.LabelBit, web2.NFLOGGroup = "web2", 7, 7
		web2.Families, web2.ExcludeCIDRs, web2.Ports, web2.Interfaces = []Family{IPv6}, nil, nil, nil
		mustEnsure(t, ns.manager(web2, b))

		m := ns.manager(webPolicy(), b)
		mustEnsure(t, m)
		if err := m.CleanupStale(); err != nil {
			t.Fatalf("CleanupStale: %v", err)
		}
		golden.Check(t, "stale-cleaned", ns.save(b))
		if other := ns.saveAll(otherBackend(b)); strings.Contains(other, "CONNSCOPE") {
			t.Errorf("the earlier run's rules are left in the other backend:\n%s", other)
		}
		mustCheck(t, m)
	})
}

func TestCleanupStaleRemovesAFamilyThePolicyDropped(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		mustEnsure(t, ns.manager(webPolicy(), b))
		v4 := webPolicy()
		v4.Families, v4.ExcludeCIDRs = []Family{IPv4}, v4.ExcludeCIDRs[:1]
		m := ns.manager(v4, b)
		mustEnsure(t, m)
		if err := m.CleanupStale(); err != nil {
			t.Fatalf("CleanupStale: %v", err)
		}
		s := ns.save(b)
		if v6 := strings.SplitN(s, "== IPv6", 2)[1]; strings.Contains(v6, "CONNSCOPE") {
			t.Errorf("IPv6 rules left:\n%s", s)
		}
		mustCheck(t, m)
	})
}

func TestCleanupAllRemovesEveryConnscopeRuleInBothBackends(t *testing.T) {
	ns := newTestNS(t)
	for _, b := range allBackends {
		foreign(ns, b)
	}
	mustEnsure(t, ns.manager(webPolicy(), BackendNFT))
	mustEnsure(t, ns.manager(sshPolicy(), BackendNFT))
	mustEnsure(t, ns.manager(sshPolicy(), BackendLegacy))
	// A jump from another built-in chain with our comment.
	ns.ipt(BackendLegacy, IPv4, "-t", "mangle", "-A", "INPUT", "-m", "comment", "--comment", "connscope test", "-j", ChainName(sshPolicy()))

	removed, err := CleanupAll(ns.options(BackendAuto))
	if err != nil {
		t.Fatalf("CleanupAll: %v", err)
	}
	for _, b := range allBackends {
		golden.Check(t, "foreign", ns.save(b))
	}
	// 3 jumps and 3 chains in nft, 2 jumps and 1 chain in legacy.
	if len(removed) != 9 {
		t.Errorf("CleanupAll reports %d removals, want 9:\n%s", len(removed), strings.Join(removed, "\n"))
	}
	removed, err = CleanupAll(ns.options(BackendAuto))
	if err != nil || len(removed) != 0 {
		t.Errorf("second CleanupAll: %v, %q", err, removed)
	}
}

func TestCleanupAllCreatesNoTables(t *testing.T) {
	ns := newTestNS(t)
	removed, err := CleanupAll(ns.options(BackendAuto))
	if err != nil || len(removed) != 0 {
		t.Fatalf("CleanupAll in an empty namespace: %v, %q", err, removed)
	}
	for _, b := range allBackends {
		if s := ns.saveAll(b); s != "" {
			t.Errorf("%s tables appeared:\n%s", b, s)
		}
	}
}

func TestRunRestoresWithinTheResyncPeriod(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		m := ns.manager(webPolicy(), b)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx, 300*time.Millisecond) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()

		waitIntact := func(what string) {
			t.Helper()
			deadline := time.Now().Add(3 * time.Second)
			for m.Check() != nil {
				if time.Now().After(deadline) {
					t.Fatalf("%s: not restored within 3s (resync 300ms): %v", what, m.Check())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		waitIntact("install")
		ns.iptBoth(b, "-t", "mangle", "-F")
		waitIntact("after a flush of mangle")
		ns.iptBoth(b, append([]string{"-t", "mangle", "-D", "PREROUTING"}, Rules(webPolicy(), IPv4).Jump...)...)
		waitIntact("after the jump was deleted")
		golden.Check(t, "install", ns.save(b))
	})
}

func TestRunRejectsANonPositivePeriod(t *testing.T) {
	if err := (&Manager{}).Run(context.Background(), 0); err == nil {
		t.Error("Run accepted a resync period of 0")
	}
}

func TestDetectBackendAsKubernetesDoes(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name    string
		setup   func(ns *testNS)
		want    Backend
		because string
	}{
		{"empty host: nft", func(*testNS) {}, BackendNFT, "as many rules or more (0)"},
		{"more legacy rules", func(ns *testNS) {
			ns.ipt(BackendLegacy, IPv4, "-A", "INPUT", "-s", "192.0.2.1", "-j", "RETURN")
		}, BackendLegacy, "iptables-legacy holds more rules (1) than iptables-nft (0)"},
		{"more nft rules", func(ns *testNS) {
			ns.ipt(BackendLegacy, IPv4, "-A", "INPUT", "-s", "192.0.2.1", "-j", "RETURN")
			ns.ipt(BackendNFT, IPv6, "-A", "INPUT", "-s", "2001:db8::1", "-j", "RETURN")
			ns.ipt(BackendNFT, IPv6, "-A", "INPUT", "-s", "2001:db8::2", "-j", "RETURN")
		}, BackendNFT, "(2) than iptables-legacy (1)"},
		{"kubelet hint in legacy beats rule counts", func(ns *testNS) {
			ns.ipt(BackendLegacy, IPv4, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
			ns.ipt(BackendNFT, IPv4, "-A", "INPUT", "-s", "192.0.2.1", "-j", "RETURN")
		}, BackendLegacy, "KUBE-IPTABLES-HINT chain is in iptables-legacy's mangle table"},
		{"kubelet canary in nft beats rule counts", func(ns *testNS) {
			ns.ipt(BackendNFT, IPv6, "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
			ns.ipt(BackendLegacy, IPv4, "-A", "INPUT", "-s", "192.0.2.1", "-j", "RETURN")
		}, BackendNFT, "KUBE-KUBELET-CANARY chain is in ip6tables-nft's mangle table"},
		{"only legacy works", func(ns *testNS) {
			for _, f := range allFamilies {
				_ = removeWrapper(ns, program(f, BackendNFT, true))
			}
		}, BackendLegacy, "iptables-nft does not work"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newTestNS(t)
			tc.setup(ns)
			d, err := DetectBackend(ns.options(BackendAuto))
			if err != nil {
				t.Fatalf("DetectBackend: %v", err)
			}
			if d.Backend != tc.want || !strings.Contains(d.Reason, tc.because) {
				t.Errorf("DetectBackend = %s (%s), want %s because %q", d.Backend, d.Reason, tc.want, tc.because)
			}
		})
	}
}

func TestDetectBackendHonoursTheOverride(t *testing.T) {
	ns := newTestNS(t)
	ns.ipt(BackendNFT, IPv4, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
	d, err := DetectBackend(ns.options(BackendLegacy))
	if err != nil || d.Backend != BackendLegacy {
		t.Fatalf("DetectBackend(legacy) = %+v, %v", d, err)
	}
	for _, f := range allFamilies {
		_ = removeWrapper(ns, program(f, BackendLegacy, true))
	}
	if _, err := DetectBackend(ns.options(BackendLegacy)); !errors.Is(err, ErrNoIptables) {
		t.Errorf("DetectBackend(legacy) without iptables-legacy = %v, want ErrNoIptables", err)
	}
	if _, err := DetectBackend(ns.options("iptables")); err == nil {
		t.Error("DetectBackend accepted backend \"iptables\"")
	}
}

func TestNoWorkingIptablesIsAClearError(t *testing.T) {
	t.Run("programs missing", func(t *testing.T) {
		opts := Options{LookPath: func(name string) (string, error) {
			return "", errors.New("executable file not found in $PATH")
		}}
		_, err := NewManager(webPolicy(), opts)
		if !errors.Is(err, ErrNoIptables) || !strings.Contains(err.Error(), "apt-get install iptables") {
			t.Errorf("NewManager = %v, want ErrNoIptables telling to install iptables", err)
		}
		if _, err := CleanupAll(opts); !errors.Is(err, ErrNoIptables) {
			t.Errorf("CleanupAll = %v, want ErrNoIptables", err)
		}
	})
	t.Run("no permission", func(t *testing.T) {
		ns := newTestNS(t)
		if _, err := lookPathErr("setpriv"); err != nil {
			t.Skip("needs setpriv (util-linux)")
		}
		for _, b := range allBackends {
			for _, f := range allFamilies {
				for _, save := range []bool{false, true} {
					ns.writeWrapper(program(f, b, save), "setpriv --reuid=65534 --regid=65534 --clear-groups")
				}
			}
		}
		_, err := NewManager(webPolicy(), ns.options(BackendAuto))
		if !errors.Is(err, ErrNoIptables) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Errorf("NewManager as nobody = %v, want ErrNoIptables naming CAP_NET_ADMIN", err)
		}
	})
}

// TestEarlierRunsSaysWhatWasTakenOver: a policy started from nothing
// reports no earlier run; a restart after a kill reports the chain it
// found, kept when identical and rewritten when the settings changed, and
// what CleanupStale deleted, so that the agent's start message agrees
// with the warnings Ensure logged.
func TestEarlierRunsSaysWhatWasTakenOver(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		ns := newTestNS(t)
		first := ns.manager(webPolicy(), b)
		mustEnsure(t, first)
		if err := first.CleanupStale(); err != nil {
			t.Fatal(err)
		}
		if e := first.EarlierRuns(); len(e) != 0 {
			t.Errorf("a first run reports earlier runs: %q", e)
		}
		mustEnsure(t, first)
		if e := first.EarlierRuns(); len(e) != 0 {
			t.Errorf("a second pass reports its own chain as an earlier run's: %q", e)
		}

		// Killed, restarted with the same settings: the chains are kept.
		same := ns.manager(webPolicy(), b)
		mustEnsure(t, same)
		if err := same.CleanupStale(); err != nil {
			t.Fatal(err)
		}
		chain := ChainName(webPolicy())
		if e := strings.Join(same.EarlierRuns(), "\n"); strings.Count(e, "chain "+chain+" kept") != 2 {
			t.Errorf("restart with the same settings reports:\n%s", e)
		}

		// Killed, restarted with another probability (same chain, other
		// rules) and another group (another chain, deleted as stale).
		changed := webPolicy()
		changed.Probability = 0.5
		rewritten := ns.manager(changed, b)
		mustEnsure(t, rewritten)
		if e := strings.Join(rewritten.EarlierRuns(), "\n"); strings.Count(e, "chain "+chain+" rewritten") != 2 {
			t.Errorf("restart with another probability reports:\n%s", e)
		}
		regrouped := changed
		regrouped.NFLOGGroup = 9
		m := ns.manager(regrouped, b)
		mustEnsure(t, m)
		if err := m.CleanupStale(); err != nil {
			t.Fatal(err)
		}
		if e := strings.Join(m.EarlierRuns(), "\n"); !strings.Contains(e, "deleted chain "+chain) || strings.Contains(e, " kept") {
			t.Errorf("restart with another group reports:\n%s", e)
		}
	})
}
