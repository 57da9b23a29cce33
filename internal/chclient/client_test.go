package chclient

import (
	"crypto/tls"
	"strings"
	"testing"
)

func TestParseURLPlainAndHTTPS(t *testing.T) {
	for _, tc := range []struct {
		url    string
		addr   string
		secure bool
	}{
		{"clickhouse://ch/connscope", "ch:8123", false},
		{"clickhouse://ch:9123/connscope", "ch:9123", false},
		{"clickhouses://ch/connscope", "ch:8443", true},
		{"clickhouses://[2001:db8::1]:9443/connscope", "[2001:db8::1]:9443", true},
	} {
		c, err := ParseURL(tc.url)
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		if c.Addr != tc.addr || c.Secure != tc.secure || c.Database != "connscope" {
			t.Errorf("%s: addr %s secure %v database %s, want %s %v connscope", tc.url, c.Addr, c.Secure, c.Database, tc.addr, tc.secure)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"https://ch:8443/connscope", `scheme "https"; write clickhouse://host:8123/database or clickhouses://host:8443/database`},
		{"clickhouses://ch:8443", "names no database; write clickhouses://host:8443/database"},
		{"clickhouses://u:p@ch/db", "no user or password"},
	} {
		if _, err := ParseURL(tc.url); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.url, err, tc.want)
		}
	}
}

func TestNewRefusesTLSForPlainHTTP(t *testing.T) {
	if _, err := New(Config{Addr: "ch:8123", TLS: &tls.Config{}}); err == nil || !strings.Contains(err.Error(), "use clickhouses://") {
		t.Errorf("New with TLS and plain HTTP: %v", err)
	}
	c, err := New(Config{Addr: "ch:8443", Secure: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.base, "https://") {
		t.Errorf("a Secure client's base URL is %s", c.base)
	}
}
