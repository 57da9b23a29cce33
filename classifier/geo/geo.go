// Package geo looks up a client address's country and autonomous system in
// MaxMind-format mmdb files (GeoLite2-Country / GeoIP2-Country and
// GeoLite2-ASN / GeoIP2-ASN style), for the classifier's aggregates.
//
// A missing file, or an address a file does not cover, gives Unknown
// (country) or 0 (ASN): geolocation is optional, never an error at lookup
// time. Only a file that exists but cannot be read is an error, at Open.
// It does not download or update databases; the user mounts them.
package geo

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Unknown is the country of an address no database covers.
const Unknown = "unknown"

// File names looked for in the directory, first match wins.
var (
	CountryFiles = []string{"GeoLite2-Country.mmdb", "GeoIP2-Country.mmdb", "GeoLite2-City.mmdb", "GeoIP2-City.mmdb", "country.mmdb"}
	ASNFiles     = []string{"GeoLite2-ASN.mmdb", "GeoIP2-ASN.mmdb", "asn.mmdb"}
)

// DB answers lookups. The zero value and nil answer Unknown and 0.
// It is safe for concurrent use.
type DB struct {
	country, asn *maxminddb.Reader
	// CountryPath and ASNPath are the files in use ("" when none).
	CountryPath, ASNPath string
}

// Open opens the country and ASN databases found in dir. dir "" or a
// directory without them gives a DB that answers Unknown.
func Open(dir string) (*DB, error) {
	db := &DB{}
	if dir == "" {
		return db, nil
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("geoip directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("geoip directory %s is not a directory: give the directory that holds GeoLite2-Country.mmdb and GeoLite2-ASN.mmdb", dir)
	}
	open := func(names []string) (*maxminddb.Reader, string, error) {
		for _, n := range names {
			p := filepath.Join(dir, n)
			r, err := maxminddb.Open(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, "", fmt.Errorf("open geoip database %s: %w", p, err)
			}
			return r, p, nil
		}
		return nil, "", nil
	}
	if db.country, db.CountryPath, err = open(CountryFiles); err != nil {
		return nil, err
	}
	if db.asn, db.ASNPath, err = open(ASNFiles); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Close releases the files.
func (db *DB) Close() error {
	if db == nil {
		return nil
	}
	var errs []error
	if db.country != nil {
		errs = append(errs, db.country.Close())
	}
	if db.asn != nil {
		errs = append(errs, db.asn.Close())
	}
	return errors.Join(errs...)
}

type countryRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	RegisteredCountry struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
}

type asnRecord struct {
	ASN uint32 `maxminddb:"autonomous_system_number"`
}

// Country returns the ISO 3166-1 alpha-2 code (upper case) of a's
// country, its registered country when the country is not known, or
// Unknown.
func (db *DB) Country(a netip.Addr) string {
	if db == nil || db.country == nil || !a.IsValid() {
		return Unknown
	}
	var rec countryRecord
	if err := db.country.Lookup(a.Unmap()).Decode(&rec); err != nil {
		return Unknown
	}
	cc := rec.Country.ISOCode
	if cc == "" {
		cc = rec.RegisteredCountry.ISOCode
	}
	if len(cc) != 2 {
		return Unknown
	}
	return strings.ToUpper(cc)
}

// ASN returns a's autonomous system number, or 0 when not known.
func (db *DB) ASN(a netip.Addr) uint32 {
	if db == nil || db.asn == nil || !a.IsValid() {
		return 0
	}
	var rec asnRecord
	if err := db.asn.Lookup(a.Unmap()).Decode(&rec); err != nil {
		return 0
	}
	return rec.ASN
}
