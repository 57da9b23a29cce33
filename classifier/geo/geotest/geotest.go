// Package geotest writes small MaxMind-format databases for tests: a
// GeoLite2-Country.mmdb and a GeoLite2-ASN.mmdb in a directory, built
// with mmdbwriter from a few networks. It is for tests only.
package geotest

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Network is one entry: a CIDR, its country (ISO code, "" for none) and
// ASN (0 for none).
type Network struct {
	CIDR    string
	Country string
	ASN     uint32
}

// Dir writes both databases into a new temporary directory and returns it.
func Dir(tb testing.TB, nets ...Network) string {
	tb.Helper()
	dir := tb.TempDir()
	country := newTree(tb, "GeoLite2-Country")
	asn := newTree(tb, "GeoLite2-ASN")
	for _, n := range nets {
		_, ipnet, err := net.ParseCIDR(n.CIDR)
		if err != nil {
			tb.Fatalf("geotest: %v", err)
		}
		if n.Country != "" {
			v := mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(n.Country)}}
			if err := country.Insert(ipnet, v); err != nil {
				tb.Fatalf("geotest: insert %s: %v", n.CIDR, err)
			}
		}
		if n.ASN != 0 {
			v := mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(n.ASN), "autonomous_system_organization": mmdbtype.String("test")}
			if err := asn.Insert(ipnet, v); err != nil {
				tb.Fatalf("geotest: insert %s: %v", n.CIDR, err)
			}
		}
	}
	write(tb, country, filepath.Join(dir, "GeoLite2-Country.mmdb"))
	write(tb, asn, filepath.Join(dir, "GeoLite2-ASN.mmdb"))
	return dir
}

func newTree(tb testing.TB, typ string) *mmdbwriter.Tree {
	t, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: typ, RecordSize: 24, IncludeReservedNetworks: true})
	if err != nil {
		tb.Fatalf("geotest: %v", err)
	}
	return t
}

func write(tb testing.TB, t *mmdbwriter.Tree, path string) {
	f, err := os.Create(path)
	if err != nil {
		tb.Fatalf("geotest: %v", err)
	}
	if _, err := t.WriteTo(f); err != nil {
		tb.Fatalf("geotest: write %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		tb.Fatalf("geotest: %v", err)
	}
}
