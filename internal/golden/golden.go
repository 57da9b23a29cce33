// Package golden compares what a test produced (a rendered rule set, a
// snapshot) with a golden file, testdata/<name>.golden beside the test, and
// rewrites the file instead when the test binary runs with -update
// (`go test ./agent/rules -update`). A difference is shown as a line diff,
// -want +got.
//
// What it does not do: it registers the -update flag itself, so a test
// package that imports it must not define its own; it never normalises
// what it is given (counters, names, ordering are the caller's business);
// it does not create testdata/ and does not remove golden files no test
// asks for any more; it compares whole strings only, not structured values.
package golden

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from what the tests produce")

// Path is the golden file of name: testdata/<name>.golden.
func Path(name string) string {
	return filepath.Join("testdata", name+".golden")
}

// Compare compares got with testdata/<name>.golden and returns an error
// naming the file, with the difference (-want +got), when they differ or
// the file cannot be read. With -update it writes got to the file instead
// and returns an error only when that fails.
func Compare(name, got string) error {
	path := Path(name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			return fmt.Errorf("update golden file: %w", err)
		}
		return nil
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w (run go test with -update to create it)", err)
	}
	if err != nil {
		return err
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		return fmt.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
	return nil
}

// Check is Compare that marks the test failed and lets it go on.
func Check(t testing.TB, name, got string) {
	t.Helper()
	if err := Compare(name, got); err != nil {
		t.Error(err)
	}
}

// Require is Compare that stops the test, for a test whose next steps
// build on the state the golden file describes.
func Require(t testing.TB, name, got string) {
	t.Helper()
	if err := Compare(name, got); err != nil {
		t.Fatal(err)
	}
}
