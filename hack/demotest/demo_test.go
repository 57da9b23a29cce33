package demotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/hosttest"
	"github.com/connscope/connscope/internal/netnstest"
)

func TestDemo(t *testing.T) {
	netnstest.NeedRoot(t, "network namespaces and iptables")
	netnstest.NeedTools(t, "bash hack/setup-scenarios.sh", "iptables", "ethtool", "curl", "openssl",
		"hping3", "nmap", "/usr/bin/python3")
	if out, err := exec.Command("/usr/bin/python3", "-c", "import scapy").CombinedOutput(); err != nil {
		t.Skipf("python3-scapy is missing (bash hack/setup-scenarios.sh): %v %s", err, out)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "connscope")
	build := exec.Command("go", "build", "-o", bin, "./cmd/connscope")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	hostRules := hosttest.MachineRules("connscope")

	b := make([]byte, 4)
	rand.Read(b)
	id := "gt" + hex.EncodeToString(b)
	summaryFile := filepath.Join(dir, "summary.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "hack/demo.sh")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "DEMO_EXIT_AFTER_SUMMARY=1", "CONNSCOPE="+bin,
		"CONNSCOPE_DEMO_ID="+id, "DEMO_SUMMARY_FILE="+summaryFile)
	// On timeout the script gets SIGTERM, which runs its cleanup.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("demo took %v", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}

	var s struct {
		Result struct {
			Summary0 map[string]string `json:"summary_0"`
		} `json:"result"`
	}
	b, err = os.ReadFile(summaryFile)
	if err != nil {
		t.Fatalf("no summary: %v\n%s", err, out)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("summary %s: %v", b, err)
	}
	for _, stage := range []string{"post_syn", "post_ack", "post_psh"} {
		if f, err := strconv.ParseFloat(s.Result.Summary0[stage], 64); err != nil || f <= 0 {
			t.Errorf("%s share is %q, want more than 0; demo output:\n%s", stage, s.Result.Summary0[stage], out)
		}
	}
	t.Logf("shares: %v", s.Result.Summary0)

	// Nothing left: namespaces, processes, the machine's rules.
	ns, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(ns), "csdemo-"+id) {
		t.Errorf("namespaces left:\n%s", ns)
	}
	hosttest.CheckNoProcessWithEnv(t, "CONNSCOPE_DEMO_ID", id)
	hosttest.CheckMachineRules(t, hostRules, "connscope")
}
