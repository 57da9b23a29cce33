package scenarios

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The bundled captures of a passing TestScenarios run (`-update`):
//
//	testdata/<group>.pcap            what tcpdump saw, one file per scenario group
//	testdata/golden.json             their expected classification, read as one input
//	testdata/nflog/<group>.pcapng    what the seed's NFLOG rules saw
//	testdata/nflog/golden.json
//	testdata/agent/<group>.pcapng    what `connscope agent` wrote (raw IP, headers only)
//	testdata/agent/golden.json
//
// The files of one folder are classified together (connscope merges them by
// timestamp), as `make demo-captures` does with testdata/*.pcap: the marker
// connection in marker.pcap, made more than the idle timeout after all the
// others, is what lets the silent connections of the other files be judged
// timeouts rather than incomplete. The NFLOG captures and the agent's sit in
// folders of their own because they hold the same connections as the
// tcpdump ones. Each folder is checked against its own golden file only.
const (
	testdataDir      = "testdata"
	testdataNFLOGDir = "testdata/nflog"
	testdataAgentDir = "testdata/agent"
	goldenName       = "golden.json"
)

// golden is one connection of a golden file: the scenario it belongs to, its
// 4-tuple, and the classification the scenario expects.
type golden struct {
	Scenario  string `json:"scenario"`
	SrcIP     string `json:"src_ip"`
	SrcPort   int    `json:"src_port"`
	DstIP     string `json:"dst_ip"`
	DstPort   int    `json:"dst_port"`
	IPVersion int    `json:"ip_version"`
	want
}

func (g golden) key() string {
	return fmt.Sprintf("%s:%d > %s:%d", g.SrcIP, g.SrcPort, g.DstIP, g.DstPort)
}

// TestScenarioCaptures classifies the bundled captures of real traffic with
// the default flags, as `make demo-captures` does, and compares every connection with
// the golden files. It needs neither root nor any tool besides go.
func TestScenarioCaptures(t *testing.T) {
	for _, dir := range []string{testdataDir, testdataNFLOGDir, testdataAgentDir} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			files := captureFiles(t, dir)
			if len(files) == 0 {
				t.Skipf("no captures in %s yet: run `go test -run TestScenarios -update` as root", dir)
			}
			checkGolden(t, buildCLI(t)(), files, filepath.Join(dir, goldenName))
		})
	}
}

// captureFiles lists the capture files of one testdata folder.
func captureFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.pcap", "*.pcapng"} {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	slices.Sort(files)
	return files
}

// checkGolden classifies files as one input with the default flags and
// compares the result with the golden file: the same connections, each
// classified as expected.
func checkGolden(t *testing.T, bin string, files []string, goldenPath string) {
	t.Helper()
	b, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("read golden file: %v", err)
	}
	var want []golden
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("%s: %v", goldenPath, err)
	}
	got := map[string]conn{}
	for _, c := range classify(t, bin, files) {
		if _, dup := got[c.key()]; dup {
			t.Errorf("%s: connection %s reported twice", strings.Join(files, " "), c.key())
		}
		got[c.key()] = c
	}
	for _, g := range want {
		c, ok := got[g.key()]
		delete(got, g.key())
		if !ok {
			t.Errorf("%s: %s: connection %s missing from the classification", goldenPath, g.Scenario, g.key())
			continue
		}
		r := result(c)
		switch {
		case r.equal(g.want):
		default:
			t.Errorf("%s: %s: connection %s:\n  got  %s\n  want %s", goldenPath, g.Scenario, g.key(), r, g.want)
		}
	}
	for k, c := range got {
		t.Errorf("%s: connection %s is not in the golden file: %s", goldenPath, k, result(c))
	}
}

// bundle is one capture of a run and the testdata folder -update writes it
// to.
type bundle struct {
	dir     string // testdata folder
	capture string // the run's capture file
	format  string // tshark's name of the file format to write
	ext     string // file name extension of the files written
	conns   []conn // the capture's classification
}

// writeTestdata replaces the bundled captures with this run's: each capture
// cut into one file per scenario group, and golden files holding each
// connection's expected classification. It then checks the new files as
// TestScenarioCaptures will, with the default idle timeout: a run on a
// machine so busy that a connection had a gap longer than that is refused.
func (l *lab) writeTestdata(bin string, bundles []bundle) {
	t := l.t
	t.Helper()
	for _, out := range bundles {
		if err := os.MkdirAll(out.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, old := range captureFiles(t, out.dir) {
			if err := os.Remove(old); err != nil {
				t.Fatal(err)
			}
		}
		for _, group := range groups() {
			var ports []string
			for _, s := range scenarios {
				if s.group == group {
					ports = append(ports, fmt.Sprint(s.port))
				}
			}
			dest, err := filepath.Abs(filepath.Join(out.dir, group+out.ext))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.run(time.Minute, nil, "tshark", "-r", out.capture, "-Y", "tcp.dstport in {"+strings.Join(ports, ", ")+"}",
				"-F", out.format, "-w", dest); err != nil {
				t.Fatal(err)
			}
		}
		var gs []golden
		for _, c := range out.conns {
			s := scenarioOf(c)
			gs = append(gs, golden{Scenario: s.name, SrcIP: c.SrcIP, SrcPort: c.SrcPort, DstIP: c.DstIP, DstPort: c.DstPort,
				IPVersion: c.IPVersion, want: sorted(s.want)})
		}
		slices.SortFunc(gs, func(a, b golden) int {
			if a.DstPort != b.DstPort {
				return a.DstPort - b.DstPort
			}
			return a.SrcPort - b.SrcPort
		})
		b, err := json.MarshalIndent(gs, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		goldenPath := filepath.Join(out.dir, goldenName)
		if err := os.WriteFile(goldenPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		checkGolden(t, bin, captureFiles(t, out.dir), goldenPath)
		if t.Failed() {
			t.Fatalf("the new files in %s do not classify as expected with the default flags (a gap longer than the default idle timeout inside a connection, on a busy machine?): run -update again", out.dir)
		}
		t.Logf("wrote %s: %s", out.dir, strings.Join(captureFiles(t, out.dir), " "))
	}
}

// groups returns the scenario groups in table order.
func groups() []string {
	var gs []string
	for _, s := range scenarios {
		if !slices.Contains(gs, s.group) {
			gs = append(gs, s.group)
		}
	}
	return gs
}

// sorted returns w with its tags sorted and never nil, as golden files hold them.
func sorted(w want) want {
	w.Tags = slices.Clone(w.Tags)
	if w.Tags == nil {
		w.Tags = []string{}
	}
	slices.Sort(w.Tags)
	return w
}
