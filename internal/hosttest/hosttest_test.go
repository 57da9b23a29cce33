package hosttest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/connscope/connscope/internal/netnstest"
)

// recorder is a testing.TB that keeps the failures it is given.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestCheckNoProcessWithEnvNamesAProcessThatCarriesTheMarker(t *testing.T) {
	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	cmd := exec.Command("sleep", "600")
	cmd.Env = append(os.Environ(), "CONNSCOPE_HOSTTEST_ID="+id)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)

	r := &recorder{TB: t}
	CheckNoProcessWithEnv(r, "CONNSCOPE_HOSTTEST_ID", id)
	want := fmt.Sprintf("process left: /proc/%d/environ sleep 600", cmd.Process.Pid)
	if len(r.errs) != 1 || !strings.HasPrefix(r.errs[0], want) {
		t.Errorf("got %q, want one failure starting %q", r.errs, want)
	}
	r.errs = nil
	CheckNoProcessWithEnv(r, "CONNSCOPE_HOSTTEST_ID", id+"x")
	if len(r.errs) != 0 {
		t.Errorf("another value: got %q, want no failure", r.errs)
	}

	stop()
	CheckNoProcessWithEnv(r, "CONNSCOPE_HOSTTEST_ID", id)
	if len(r.errs) != 0 {
		t.Errorf("after the process stopped: got %q, want no failure", r.errs)
	}
}

func TestMachineRulesPrefixesEachLineWithItsProgramAndCheckSeesAChange(t *testing.T) {
	netnstest.NeedRoot(t, "iptables-save reads the machine's rule sets (read only)")
	netnstest.NeedTools(t, "apt-get install iptables", "iptables-nft-save", "iptables-legacy-save")
	// "" is in every line: every line of both rule sets comes back.
	all := MachineRules("")
	for _, l := range strings.Split(all, "\n") {
		if l != "" && !strings.HasPrefix(l, "iptables-nft-save: ") && !strings.HasPrefix(l, "iptables-legacy-save: ") {
			t.Errorf("line without its program: %q", l)
		}
	}
	for _, prog := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		if out, err := exec.Command(prog).Output(); err == nil && len(out) > 0 && !strings.Contains(all, prog+": ") {
			t.Errorf("%s printed %d bytes, none of them came back:\n%s", prog, len(out), all)
		}
	}
	if got := MachineRules("no word of any rule set 7f3a"); got != "" {
		t.Errorf("a word no rule holds: got %q", got)
	}

	r := &recorder{TB: t}
	before := MachineRules("connscope")
	CheckMachineRules(r, before, "connscope")
	if len(r.errs) != 0 {
		t.Errorf("unchanged: got %q", r.errs)
	}
	CheckMachineRules(r, before+"\nchanged", "connscope")
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "the machine's connscope rules changed") {
		t.Errorf("changed: got %q, want one failure", r.errs)
	}
}

func TestCheckConfinedNamesWhatIsNotConfined(t *testing.T) {
	good := "Name:\tconnscope\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\n" +
		"CapBnd:\t0000000000003000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
	r := &recorder{}
	if f := CheckConfined(r, "agent", good, 1<<12|1<<13); len(r.errs) != 0 || f["Name"] != "connscope" {
		t.Errorf("a confined process: errors %v, fields %v", r.errs, f)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"CapBnd:\t0000000000003000", "CapBnd:\t000001ffffffffff", "CapBnd of agent"},
		{"CapEff:\t0000000000003000", "CapEff:\t0000000000001000", "CapEff of agent"},
		{"NoNewPrivs:\t1", "NoNewPrivs:\t0", "NoNewPrivs"},
		{"Seccomp:\t2", "Seccomp:\t0", "Seccomp"},
	} {
		r := &recorder{}
		CheckConfined(r, "agent", strings.Replace(good, tc.from, tc.to, 1), 1<<12|1<<13)
		if len(r.errs) != 1 || !strings.Contains(r.errs[0], tc.want) {
			t.Errorf("%s: errors %v, want one naming %s", tc.to, r.errs, tc.want)
		}
	}
}
