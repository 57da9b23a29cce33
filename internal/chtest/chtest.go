// Package chtest starts a real ClickHouse server for tests and benchmarks:
// its own process, listening on loopback only, on free ports, with its
// configuration and data in a folder of its own, stopped by its PID. It
// never touches the machine's clickhouse-server service or its files. It
// serves HTTP and HTTPS, the latter with a certificate for 127.0.0.1 signed
// by a CA made for that server alone (CAFile).
//
// The server binary is Debian's clickhouse-server (hack/setup-clickhouse.sh
// installs it), or CONNSCOPE_CLICKHOUSE_SERVER naming another (a current
// release's `clickhouse` binary works too: it is run as `clickhouse server`).
// When it is missing, tests skip, unless CONNSCOPE_REQUIRE_CLICKHOUSE=1
// (set by `make test`), which makes them fail.
package chtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/connscope/connscope/internal/certtest"
	"github.com/connscope/connscope/internal/chclient"
)

// Server is a running (or stopped) ClickHouse server.
type Server struct {
	dir       string
	bin       []string
	httpPort  int
	httpsPort int
	tcpPort   int
	caFile    string
	cmd       *exec.Cmd
	done      chan struct{}
}

// Binary returns the command that runs a server, or an error saying how to
// get one.
func Binary() ([]string, error) {
	if p := os.Getenv("CONNSCOPE_CLICKHOUSE_SERVER"); p != "" {
		if filepath.Base(p) == "clickhouse" {
			return []string{p, "server"}, nil
		}
		return []string{p}, nil
	}
	for _, name := range []string{"clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"} {
		if p, err := exec.LookPath(name); err == nil {
			return []string{p}, nil
		}
	}
	if p, err := exec.LookPath("clickhouse"); err == nil {
		return []string{p, "server"}, nil
	}
	return nil, errors.New("clickhouse-server not found: run hack/setup-clickhouse.sh (apt-get install clickhouse-server) or set CONNSCOPE_CLICKHOUSE_SERVER")
}

// Start starts a server for t and stops it when t ends. It skips t when
// no server binary is installed, or fails it under
// CONNSCOPE_REQUIRE_CLICKHOUSE=1.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CONNSCOPE_REQUIRE_CLICKHOUSE") == "1" {
			t.Fatalf("CONNSCOPE_REQUIRE_CLICKHOUSE=1: %v", err)
		}
		t.Skip(err)
	}
	dir, err := os.MkdirTemp("", "connscope-chtest-")
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartIn(dir, bin)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill() // its data goes with the folder: no need to wait for a clean stop
		if t.Failed() {
			t.Logf("ClickHouse server log kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return s
}

// StartIn starts a server with its files in dir (which must exist) and
// waits until it answers.
func StartIn(dir string, bin []string) (*Server, error) {
	hp, err := freePort()
	if err != nil {
		return nil, err
	}
	tp, err := freePort()
	if err != nil {
		return nil, err
	}
	sp, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, bin: bin, httpPort: hp, httpsPort: sp, tcpPort: tp}
	if err := s.writeCerts(); err != nil {
		return nil, err
	}
	if err := s.writeConfig(); err != nil {
		return nil, err
	}
	return s, s.Restart()
}

// Dir returns the server's folder (configuration, data, logs).
func (s *Server) Dir() string { return s.dir }

// Addr returns the HTTP interface's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.httpPort)) }

// TCPPort returns the native protocol's port (clickhouse-client).
func (s *Server) TCPPort() int { return s.tcpPort }

// URL returns clickhouse://ADDR/db.
func (s *Server) URL(db string) string { return "clickhouse://" + s.Addr() + "/" + db }

// HTTPSAddr returns the HTTPS interface's host:port. Its certificate is
// for 127.0.0.1, signed by the test CA in CAFile.
func (s *Server) HTTPSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.httpsPort)) }

// TLSURL returns clickhouses://HTTPSADDR/db.
func (s *Server) TLSURL(db string) string { return "clickhouses://" + s.HTTPSAddr() + "/" + db }

// CAFile returns the PEM file of the CA that signed the server's
// certificate (made for this server only).
func (s *Server) CAFile() string { return s.caFile }

// writeCerts makes a CA (certtest) and a certificate for 127.0.0.1 it
// signs, for the HTTPS interface (server.pem and server.key, which the
// configuration names).
func (s *Server) writeCerts() error {
	ca, err := certtest.WriteCA(s.dir, "chtest")
	if err != nil {
		return err
	}
	s.caFile = ca.CertFile
	return ca.WriteServer("127.0.0.1", filepath.Join(s.dir, "server.pem"), filepath.Join(s.dir, "server.key"))
}

// Client returns a client of database db (not created).
func (s *Server) Client(db string) *chclient.Client {
	c, err := chclient.New(chclient.Config{Addr: s.Addr(), Database: db, Timeout: 60 * time.Second})
	if err != nil {
		panic(err)
	}
	return c
}

// Restart starts the server process again after Stop (same ports, same
// data) and waits until it answers; it starts it the first time too.
func (s *Server) Restart() error {
	if s.cmd != nil {
		return errors.New("chtest: server already running")
	}
	log, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	args := append(append([]string{}, s.bin[1:]...), "--config-file="+filepath.Join(s.dir, "config.xml"))
	cmd := exec.Command(s.bin[0], args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("chtest: start %s: %w", s.bin[0], err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()

	c := s.Client("")
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			s.cmd = nil
			b, _ := os.ReadFile(filepath.Join(s.dir, "log", "error.log"))
			return fmt.Errorf("chtest: ClickHouse server exited at start: %s", lastLines(string(b), 10))
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("chtest: ClickHouse server did not answer within 60s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 20 s) and waits for
// it; its data stays for Restart.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	pid := s.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			if lines++; lines > n {
				return s[i+1:]
			}
		}
	}
	return s
}

// writeConfig writes a configuration that listens on loopback only, keeps
// everything under s.dir and knows one user, default, from loopback,
// without a password, plus "connscope" with password "secret" (for the
// authentication tests).
func (s *Server) writeConfig() error {
	for _, d := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>%[1]s/log/server.log</log><errorlog>%[1]s/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>%[2]d</http_port>
  <tcp_port>%[3]d</tcp_port>
  <https_port>%[4]d</https_port>
  <openSSL><server><certificateFile>%[1]s/server.pem</certificateFile><privateKeyFile>%[1]s/server.key</privateKeyFile><verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols></server></openSSL>
  <path>%[1]s/data/</path>
  <tmp_path>%[1]s/tmp/</tmp_path>
  <user_files_path>%[1]s/user_files/</user_files_path>
  <format_schema_path>%[1]s/format_schemas/</format_schema_path>
  <users_config>%[1]s/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
</yandex>
`, s.dir, s.httpPort, s.tcpPort, s.httpsPort)
	users := `<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default>
    <connscope><password>secret</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></connscope>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`
	if err := os.WriteFile(filepath.Join(s.dir, "config.xml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, "users.xml"), []byte(users), 0o644)
}
