package main

import (
	"strings"
	"testing"

	"github.com/connscope/connscope/internal/version"
)

// connscope --version names the release, the tag of the image it ships in.
func TestVersionFlagPrintsTheRelease(t *testing.T) {
	out, _, err := runCLI(t, "--version")
	if err != nil {
		t.Fatal(err)
	}
	if want := "connscope version " + version.Version + "\n"; out != want {
		t.Errorf("--version printed %q, want %q", out, want)
	}
	if strings.Contains(out, "latest") {
		t.Errorf("--version printed a moving tag: %q", out)
	}
}
