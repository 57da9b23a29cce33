package geo_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/connscope/connscope/classifier/geo"
	"github.com/connscope/connscope/classifier/geo/geotest"
)

func TestLookupFromMmdbFiles(t *testing.T) {
	dir := geotest.Dir(t,
		geotest.Network{CIDR: "198.51.100.0/24", Country: "DE", ASN: 64500},
		geotest.Network{CIDR: "2001:db8::/32", Country: "JP", ASN: 64501},
		geotest.Network{CIDR: "203.0.113.0/24", ASN: 64502},
	)
	db, err := geo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, tc := range []struct {
		addr    string
		country string
		asn     uint32
	}{
		{"198.51.100.7", "DE", 64500},
		{"::ffff:198.51.100.7", "DE", 64500},
		{"2001:db8::1", "JP", 64501},
		{"203.0.113.1", geo.Unknown, 64502},
		{"192.0.2.1", geo.Unknown, 0},
	} {
		a := netip.MustParseAddr(tc.addr)
		if got := db.Country(a); got != tc.country {
			t.Errorf("Country(%s) = %q, want %q", a, got, tc.country)
		}
		if got := db.ASN(a); got != tc.asn {
			t.Errorf("ASN(%s) = %d, want %d", a, got, tc.asn)
		}
	}
}

func TestMissingFilesMeanUnknown(t *testing.T) {
	for _, dir := range []string{"", t.TempDir()} {
		db, err := geo.Open(dir)
		if err != nil {
			t.Fatalf("Open(%q): %v", dir, err)
		}
		if got := db.Country(netip.MustParseAddr("198.51.100.7")); got != geo.Unknown {
			t.Errorf("country %q, want unknown", got)
		}
		if got := db.ASN(netip.MustParseAddr("198.51.100.7")); got != 0 {
			t.Errorf("asn %d, want 0", got)
		}
	}
	var nilDB *geo.DB
	if nilDB.Country(netip.MustParseAddr("198.51.100.7")) != geo.Unknown {
		t.Error("nil DB must answer unknown")
	}
}

func TestBadFilesAreErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "GeoLite2-ASN.mmdb"), []byte("not an mmdb"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := geo.Open(dir); err == nil {
		t.Error("a corrupt database must be an error")
	}
	if _, err := geo.Open(filepath.Join(dir, "nope")); err == nil {
		t.Error("a missing directory must be an error")
	}
}
