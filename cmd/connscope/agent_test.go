package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeIptables puts scripts named as every iptables program in a folder
// that becomes the whole PATH: each records its name and arguments in the
// returned file and fails, so nothing can reach netfilter and every
// attempt shows.
func fakeIptables(t *testing.T) (record string) {
	t.Helper()
	dir := t.TempDir()
	record = filepath.Join(dir, "invocations")
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-nft", "-legacy", "-save", "-nft-save", "-legacy-save", "-restore", "-nft-restore", "-legacy-restore"} {
			script := "#!/bin/sh\necho \"$0 $*\" >> " + record + "\nexit 1\n"
			if err := os.WriteFile(filepath.Join(dir, fam+suffix), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, name := range []string{"nft", "xtables-nft-multi", "xtables-legacy-multi"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\necho \"$0 $*\" >> "+record+"\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return record
}

func invocations(t *testing.T, record string) string {
	t.Helper()
	b, err := os.ReadFile(record)
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// required are flags that make a valid configuration together.
func required(sink string) []string {
	return []string{"--probability", "0.5", "--label-bit", "3", "--nflog-group", "5", "--sink", sink, "--metrics-addr", ""}
}

func TestAgentBadFlagsNameTheFlagAndRunNoIptables(t *testing.T) {
	dir := t.TempDir()
	sink := "file://" + filepath.Join(dir, "out.pcapng")
	badFile := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badFile, []byte("probability: 0.5\nlabelbit: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	goodFile := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(goodFile, []byte("probability: 0.5\nlabelBit: 3\nnflogGroup: 5\nsink: "+sink+"\nmetricsAddr: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing given", nil, []string{"--probability (probability): is required", "--label-bit (labelBit): is required", "--nflog-group (nflogGroup): is required", "--sink (sink): is required"}},
		{"not a number", append(required(sink), "--probability", "often"), []string{`invalid argument "often" for "--probability"`}},
		{"unknown flag", append(required(sink), "--probabilty", "0.1"), []string{"unknown flag: --probabilty"}},
		{"probability out of range", append(required(sink), "--probability", "2"), []string{"--probability (probability): 2 is not in (0, 1]"}},
		{"probability 0", append(required(sink), "--probability", "0"), []string{"--probability (probability): 0 is not in (0, 1]"}},
		{"label bit", append(required(sink), "--label-bit", "200"), []string{"--label-bit (labelBit): 200 is not in 0-127"}},
		{"backend", append(required(sink), "--backend", "iptables"), []string{`--backend (backend): "iptables"`}},
		{"sink", append(required(sink), "--sink", "tcp://x:1"), []string{`--sink (sink): "tcp://x:1": scheme "tcp"`}},
		{"ports", append(required(sink), "--ports", "80,0"), []string{"--ports (ports): 0 is not a TCP port"}},
		{"argument", append(required(sink), "extra"), []string{`unknown command "extra"`}},
		{"file with an unknown key", []string{"--config", badFile}, []string{`line 2: unknown key "labelbit"`}},
		{"flag over a good file", []string{"--config", goodFile, "--copy-range", "20"}, []string{"--copy-range (copyRange): 20 is not in 60-512"}},
		{"cleanup backend", []string{"cleanup", "--backend", "iptables"}, []string{`--backend "iptables": use all, nft or legacy`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			record := fakeIptables(t)
			_, _, err := runCLI(t, append([]string{"agent"}, tc.args...)...)
			if err == nil {
				t.Fatal("the command succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if got := invocations(t, record); got != "" {
				t.Errorf("iptables ran:\n%s", got)
			}
			if _, err := os.Stat(filepath.Join(dir, "out.pcapng")); err == nil {
				t.Errorf("the sink file was created")
			}
		})
	}
}

// The fake iptables does catch what a valid configuration runs: backend
// detection reads every backend with its -save program first, fails on
// the fakes, and the agent stops there, before its sink or NFLOG.
func TestAgentValidFlagsReachIptablesFirst(t *testing.T) {
	record := fakeIptables(t)
	dir := t.TempDir()
	_, _, err := runCLI(t, append([]string{"agent"}, required("file://"+filepath.Join(dir, "out.pcapng"))...)...)
	if err == nil || !strings.Contains(err.Error(), "--backend auto: no working iptables") {
		t.Fatalf("got %v, want the backend detection to fail", err)
	}
	got := invocations(t, record)
	for _, prog := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		if !strings.Contains(got, prog) {
			t.Errorf("%s did not run; invocations:\n%s", prog, got)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.Contains(line, "-save") {
			t.Errorf("a program other than a -save ran: %s", line)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out.pcapng")); err == nil {
		t.Errorf("the sink was opened although the backend failed")
	}
}

func TestAgentCleanupWithNothingThere(t *testing.T) {
	// Every -save program fails on the fakes: no backend can be read, which
	// is an error (a host without iptables), and nothing else runs.
	record := fakeIptables(t)
	_, _, err := runCLI(t, "agent", "cleanup")
	if err == nil || !strings.Contains(err.Error(), "no working iptables") {
		t.Fatalf("got %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(invocations(t, record)), "\n") {
		if !strings.Contains(line, "-save") {
			t.Errorf("a program other than a -save ran: %s", line)
		}
	}
}
