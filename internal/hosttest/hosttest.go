// Package hosttest holds the checks of tests that must leave the machine
// as they found it (the standalone demo's test, hack/demotest, and the
// cluster end-to-end test, hack/cluster/e2e): the lines of the machine's
// own rule sets that mention given words, read before and compared after,
// and processes left running that carry the test's marker in their
// environment; and how a process connscope runs is confined
// (CheckConfined: the cluster test's agent pod, config/systemd's units).
//
// What it does not do: it only reads, never changes a rule, stops a
// process or deletes anything; it reads the IPv4 rule sets only
// (iptables-nft-save and iptables-legacy-save: a program that is missing or
// fails is passed over); it knows nothing of network namespaces (a test
// checks its own; internal/netnstest makes and removes them) nor of the
// rules inside them. It is for tests that run as root
// (netnstest.NeedRoot first).
package hosttest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// MachineRules returns the lines of the machine's own IPv4 rule sets that
// contain one of words (compared in lower case, so words are given in
// lower case), each prefixed with the -save program that printed it.
func MachineRules(words ...string) string {
	var lines []string
	for _, prog := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := exec.Command(prog).Output()
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			ll := strings.ToLower(l)
			for _, w := range words {
				if strings.Contains(ll, w) {
					lines = append(lines, prog+": "+l)
					break
				}
			}
		}
	}
	return strings.Join(lines, "\n")
}

// CheckMachineRules fails t (and lets it go on) when MachineRules(words)
// is no longer before, the value read when the test began.
func CheckMachineRules(t testing.TB, before string, words ...string) {
	t.Helper()
	if got := MachineRules(words...); got != before {
		t.Errorf("the machine's connscope rules changed:\nbefore:\n%s\nafter:\n%s", before, got)
	}
}

// CheckNoProcessWithEnv fails t (and lets it go on) for each process
// whose environment holds name=value, naming its /proc entry and command
// line.
func CheckNoProcessWithEnv(t testing.TB, name, value string) {
	t.Helper()
	marker := []byte(name + "=" + value + "\x00")
	environs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, e := range environs {
		b, err := os.ReadFile(e)
		if err == nil && bytes.Contains(b, marker) {
			cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(e), "cmdline"))
			t.Errorf("process left: %s %s", e, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
	}
}

// CheckConfined fails t (and lets it go on) unless status, the text of
// /proc/PID/status of the process name says, shows exactly the
// capabilities of mask as its effective, permitted and bounding sets,
// no_new_privs, and a seccomp filter (mode 2). It returns status's fields.
func CheckConfined(t testing.TB, name, status string, mask uint64) map[string]string {
	t.Helper()
	fields := map[string]string{}
	for _, l := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	want := fmt.Sprintf("%016x", mask)
	for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if fields[k] != want {
			t.Errorf("%s of %s is %q, want %s", k, name, fields[k], want)
		}
	}
	if fields["NoNewPrivs"] != "1" || fields["Seccomp"] != "2" {
		t.Errorf("NoNewPrivs %q Seccomp %q of %s, want 1 and 2 (filter)", fields["NoNewPrivs"], fields["Seccomp"], name)
	}
	return fields
}
