package golden

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inTemp runs the test in a fresh folder that has testdata/ed.golden.
func inTemp(t *testing.T) {
	t.Helper()
	t.Chdir(t.TempDir())
	if err := os.Mkdir("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "ed.golden"), []byte("a\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCompareAcceptsTheSameTextAndShowsADifference(t *testing.T) {
	inTemp(t)
	if err := Compare("ed", "a\nb\n"); err != nil {
		t.Fatalf("same text: %v", err)
	}
	err := Compare("ed", "a\nc\n")
	if err == nil {
		t.Fatal("different text: no error")
	}
	var minus, plus bool
	for _, l := range strings.Split(err.Error(), "\n") {
		minus = minus || strings.HasPrefix(l, "-") && strings.Contains(l, `b\n`)
		plus = plus || strings.HasPrefix(l, "+") && strings.Contains(l, `c\n`)
	}
	if !minus || !plus || !strings.Contains(err.Error(), "testdata/ed.golden differs") {
		t.Errorf("error does not name the file and show -b +c:\n%v", err)
	}
}

func TestCompareNamesAMissingFileAndTheFlagThatWritesIt(t *testing.T) {
	inTemp(t)
	err := Compare("absent", "x")
	if err == nil || !strings.Contains(err.Error(), "absent.golden") || !strings.Contains(err.Error(), "-update") {
		t.Fatalf("got %v, want an error naming testdata/absent.golden and -update", err)
	}
}

func TestCompareWithUpdateWritesTheFile(t *testing.T) {
	inTemp(t)
	*update = true
	t.Cleanup(func() { *update = false })
	if err := Compare("ed", "new\n"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("testdata", "ed.golden"))
	if err != nil || string(b) != "new\n" {
		t.Fatalf("file holds %q (%v), want %q", b, err, "new\n")
	}
}
