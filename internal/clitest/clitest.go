// Package clitest helps tests that run a command in the test's own
// process: a standard input fed through a real pipe (as a shell pipeline
// feeds it), and a buffer that goroutines write while the test reads it.
//
// What it does not do: it does not start processes (internal/netnstest
// does, in network namespaces), and it swaps the process-wide os.Stdin, so
// a test that uses Stdin must not run in parallel with another that reads
// standard input.
package clitest

import (
	"bytes"
	"os"
	"sync"
	"testing"
)

// Stdin makes os.Stdin the read end of a new pipe until the test ends, and
// returns the write end: the test writes the input and closes it.
func Stdin(tb testing.TB) *os.File {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	old := os.Stdin
	os.Stdin = r
	tb.Cleanup(func() {
		os.Stdin = old
		r.Close()
		w.Close()
	})
	return w
}

// StdinFrom is Stdin with all of data written (from a goroutine, so that
// data larger than the pipe does not block) and the pipe then closed.
func StdinFrom(tb testing.TB, data []byte) {
	tb.Helper()
	w := Stdin(tb)
	go func() {
		w.Write(data)
		w.Close()
	}()
}

// Buffer is a bytes.Buffer safe for writers and readers at once: a log or
// a command's stderr written from goroutines while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what has been written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
