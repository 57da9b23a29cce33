package netnstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Proc is a background process started inside a namespace by Start, with
// its stdout and stderr in files.
type Proc struct {
	Name string

	cmd            *exec.Cmd
	stdout, stderr string // paths
	done           chan struct{}
	err            error // what Wait returned, once done is closed
}

// Start starts args inside the namespace in the background, in a process
// group of its own, with its stdout and stderr in dir/<name>.out and
// dir/<name>.err. When the test ends, also when it fails, a cleanup kills
// the group (SIGKILL, by PID) if the process still runs and waits for it.
// Cleanups registered after Start run before that one.
func (ns *NS) Start(tb testing.TB, dir, name string, args ...string) *Proc {
	tb.Helper()
	p := &Proc{
		Name:   name,
		stdout: filepath.Join(dir, name+".out"),
		stderr: filepath.Join(dir, name+".err"),
		done:   make(chan struct{}),
	}
	stdout, err := os.Create(p.stdout)
	if err != nil {
		tb.Fatal(err)
	}
	stderr, err := os.Create(p.stderr)
	if err != nil {
		stdout.Close()
		tb.Fatal(err)
	}
	p.cmd = groupCommand(context.Background(), ns.enter(args)...)
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	if err := p.cmd.Start(); err != nil {
		stdout.Close()
		stderr.Close()
		tb.Fatalf("start %s [%s] %s: %v", name, ns.name, strings.Join(args, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		stdout.Close()
		stderr.Close()
		close(p.done)
	}()
	tb.Cleanup(func() {
		if p.Running() {
			_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		}
		<-p.done
	})
	return p
}

// Pid is the process's PID, which is also its process group's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is what waiting for the process returned (nil for exit status 0, an
// *exec.ExitError otherwise); valid once Done is closed.
func (p *Proc) Err() error { return p.err }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Output is what the process printed so far, stdout then stderr.
func (p *Proc) Output() string {
	o, _ := os.ReadFile(p.stdout)
	return string(o) + p.Stderr()
}

// Stderr is what the process printed on stderr so far.
func (p *Proc) Stderr() string {
	e, _ := os.ReadFile(p.stderr)
	return string(e)
}

// WaitOutput waits until the process has printed text (on stdout or
// stderr); it fails the test when the process exits first or timeout
// passes.
func (p *Proc) WaitOutput(tb testing.TB, text string, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.Output(), text) {
		if !p.Running() {
			tb.Fatalf("%s exited (%v) before printing %q:\n%s", p.Name, p.err, text, p.Output())
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not print %q within %v:\n%s", p.Name, text, timeout, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Wait waits for the process to exit within timeout and returns its exit
// code (-1 when a signal ended it); it fails the test after timeout.
func (p *Proc) Wait(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		tb.Fatalf("%s did not exit within %v:\n%s", p.Name, timeout, p.Output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// Stop sends SIGINT to the process group (what Ctrl-C does, so captures
// flush their files) and waits for it to exit. After timeout it kills the
// group, waits, and returns an error that says so, with the output.
func (p *Proc) Stop(timeout time.Duration) error {
	_ = syscall.Kill(-p.Pid(), syscall.SIGINT)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not stop on SIGINT within %v; killed:\n%s", p.Name, timeout, p.Output())
	}
}
