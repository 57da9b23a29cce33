package service_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/classifier/service"
	"github.com/connscope/connscope/packet"
)

func config(t *testing.T, path string) service.Config {
	return service.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Policy: "web", StorePath: path, Token: "tok",
		IdleTimeout: 100 * time.Millisecond, Hold: 100 * time.Millisecond, Grace: 10 * time.Millisecond, Tick: 20 * time.Millisecond,
	}
}

func run(t *testing.T, cfg service.Config) (*service.Service, func()) {
	t.Helper()
	s, err := service.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return s, stop
}

// resets returns n connections SYN, ACK, PSH+ACK, RST (post_psh) stamped now.
func resets(n int) []packet.Record {
	now := time.Now()
	var out []packet.Record
	for i := range n {
		for j, f := range []packet.Flags{packet.SYN, packet.ACK, packet.PSH | packet.ACK, packet.RST} {
			r := packet.Record{Timestamp: now.Add(time.Duration(j) * time.Millisecond).UnixNano(), SrcPort: uint16(30000 + i), DstPort: 443, Flags: f, Seq: 1, TTL: 60}
			if f.Has(packet.PSH) {
				r.PayloadLen = 200
			}
			r.SetSrc(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
			r.SetDst(netip.MustParseAddr("192.0.2.1"))
			out = append(out, r)
		}
	}
	return out
}

type summary struct {
	Result struct {
		Summary0 struct {
			PostPSH string `json:"post_psh"`
		} `json:"summary_0"`
		Connections struct {
			Classified int `json:"classified"`
		} `json:"connections"`
	} `json:"result"`
}

func get(t *testing.T, url string) (int, summary) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var s summary
	json.NewDecoder(res.Body).Decode(&s)
	return res.StatusCode, s
}

func TestServiceIngestsServesAndKeepsAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "connscope.db")
	s, stop := run(t, config(t, path))
	sink, err := ship.Open("grpc://"+s.GRPCAddr(), ship.Options{Node: "node-a", Policy: "web", Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	if err := sink.Send(context.Background(), resets(5)); err != nil {
		t.Fatal(err)
	}
	url := "http://" + s.HTTPAddr() + "/radar/tcp_resets_timeouts/summary?dateRange=1d"
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, sum := get(t, url)
		if code == 200 && sum.Result.Connections.Classified == 5 {
			if sum.Result.Summary0.PostPSH != "100.000" {
				t.Errorf("post_psh %q", sum.Result.Summary0.PostPSH)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not classified in time: %d %+v", code, sum)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/api/v1/dimensions"} {
		res, err := http.Get("http://" + s.HTTPAddr() + p)
		if err != nil || res.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", p, err, res)
		}
		res.Body.Close()
	}
	stop()

	s, stop = run(t, config(t, path))
	defer stop()
	if _, sum := get(t, "http://"+s.HTTPAddr()+"/radar/tcp_resets_timeouts/summary?dateRange=1d"); sum.Result.Connections.Classified != 5 {
		t.Errorf("after restart: %+v", sum)
	}
}

func TestConfigValidation(t *testing.T) {
	good := service.Config{StorePath: "/tmp/x.db"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if good.GRPCAddr != ":9443" || good.HTTPAddr != ":8080" || good.Retention != 30*24*time.Hour {
		t.Errorf("defaults %+v", good)
	}
	for _, tc := range []struct {
		name string
		mod  func(*service.Config)
		want string
	}{
		{"no store", func(c *service.Config) { c.StorePath = "" }, "no store"},
		{"bad grpc addr", func(c *service.Config) { c.GRPCAddr = "9443" }, "gRPC address"},
		{"bad http addr", func(c *service.Config) { c.HTTPAddr = "localhost" }, "HTTP address"},
		{"short retention", func(c *service.Config) { c.Retention = time.Minute }, "retention"},
		{"idle timeout", func(c *service.Config) { c.IdleTimeout = time.Microsecond }, "idle timeout"},
		{"packet cap", func(c *service.Config) { c.PacketCap = 100 }, "packet cap"},
		{"negative grace", func(c *service.Config) { c.Grace = -time.Second }, "negative"},
	} {
		c := service.Config{StorePath: "/tmp/x.db"}
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", tc.name, err, tc.want)
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	if tok, err := service.ReadTokenFile(write("ok", "  s3cret\n")); err != nil || tok != "s3cret" {
		t.Errorf("token %q %v", tok, err)
	}
	for _, p := range []string{write("empty", "\n"), write("two", "a b"), filepath.Join(dir, "missing")} {
		if _, err := service.ReadTokenFile(p); err == nil {
			t.Errorf("%s: no error", p)
		}
	}
}
