package api

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/connscope/connscope/classifier/store"
)

// badParam is a user error: the response is 400 with its message.
type badParam struct{ msg string }

func (e *badParam) Error() string { return e.msg }

func bad(name, format string, a ...any) error {
	return &badParam{msg: name + ": " + fmt.Sprintf(format, a...)}
}

// interval is an aggregation interval.
type interval struct {
	param string // 15m, 1h, 1d, 1w
	radar string // FIFTEEN_MINUTES, ...
	d     time.Duration
}

var intervals = []interval{
	{"15m", "FIFTEEN_MINUTES", 15 * time.Minute},
	{"1h", "ONE_HOUR", time.Hour},
	{"1d", "ONE_DAY", 24 * time.Hour},
	{"1w", "ONE_WEEK", 7 * 24 * time.Hour},
}

// weekOrigin aligns weekly intervals on Mondays 00:00 UTC.
var weekOrigin = time.Date(1970, 1, 5, 0, 0, 0, 0, time.UTC).Unix()

// start returns the start of the interval holding t (s since the epoch).
func (iv interval) start(sec int64) int64 {
	w := int64(iv.d / time.Second)
	origin := int64(0)
	if iv.param == "1w" {
		origin = weekOrigin
	}
	off := (sec - origin) % w
	if off < 0 {
		off += w
	}
	return sec - off
}

// MaxDateRange bounds a query's time span.
const MaxDateRange = 366 * 24 * time.Hour

// maxPoints bounds the intervals of one time series (checked by the
// series endpoints only: a summary has no intervals).
const maxPoints = 20000

// query is a parsed request.
type query struct {
	filter     store.Filter
	start, end time.Time
	interval   interval
	csv        bool
	name       string
	limit      int
}

var known = map[string]bool{
	"location": true, "asn": true, "dateRange": true, "dateStart": true, "dateEnd": true,
	"aggInterval": true, "format": true, "node": true, "port": true, "ipVersion": true, "policy": true,
	"name": true,
}

var (
	rangeRE   = regexp.MustCompile(`^([0-9]{1,4})([dw])((?i:control))?$`)
	countryRE = regexp.MustCompile(`^[A-Za-z]{2}$`)
)

// list splits a comma list, refusing empty items.
func list(v url.Values, name string) ([]string, error) {
	vals := v[name]
	if len(vals) == 0 {
		return nil, nil
	}
	var out []string
	for _, s := range vals {
		for _, item := range strings.Split(s, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				return nil, bad(name, "empty item in %q: give a comma-separated list", s)
			}
			out = append(out, item)
		}
	}
	return out, nil
}

// parse reads the parameters of r. extra names parameters an endpoint
// accepts beyond the common ones.
func parse(v url.Values, now time.Time, extra ...string) (*query, error) {
	for k := range v {
		if !known[k] && !slices.Contains(extra, k) {
			names := make([]string, 0, len(known)+len(extra))
			for n := range known {
				names = append(names, n)
			}
			names = append(names, extra...)
			slices.Sort(names)
			return nil, bad(k, "unknown parameter; known ones are %s", strings.Join(names, ", "))
		}
	}
	for k, vals := range v {
		if len(vals) > 1 {
			return nil, bad(k, "given %d times: give it once (several values as one comma-separated list); this API returns one series and does not compare several", len(vals))
		}
	}
	q := &query{}
	f := &q.filter

	locs, err := list(v, "location")
	if err != nil {
		return nil, err
	}
	for _, l := range locs {
		cc, not := strings.CutPrefix(l, "-")
		if !countryRE.MatchString(cc) {
			return nil, bad("location", "%q is not a two-letter ISO 3166-1 country code (e.g. US, or -US to exclude)", l)
		}
		if not {
			f.NotCountries = append(f.NotCountries, strings.ToUpper(cc))
		} else {
			f.Countries = append(f.Countries, strings.ToUpper(cc))
		}
	}
	asns, err := list(v, "asn")
	if err != nil {
		return nil, err
	}
	for _, a := range asns {
		num, not := strings.CutPrefix(a, "-")
		num = strings.TrimPrefix(strings.TrimPrefix(num, "AS"), "as")
		n, err := strconv.ParseUint(num, 10, 32)
		if err != nil || n == 0 {
			return nil, bad("asn", "%q is not an AS number from 1 to 4294967295 (e.g. 13335, or -13335 to exclude)", a)
		}
		if not {
			f.NotASNs = append(f.NotASNs, uint32(n))
		} else {
			f.ASNs = append(f.ASNs, uint32(n))
		}
	}
	if f.Nodes, err = list(v, "node"); err != nil {
		return nil, err
	}
	if f.Policies, err = list(v, "policy"); err != nil {
		return nil, err
	}
	ports, err := list(v, "port")
	if err != nil {
		return nil, err
	}
	for _, p := range ports {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return nil, bad("port", "%q is not a TCP port from 1 to 65535", p)
		}
		f.Ports = append(f.Ports, uint16(n))
	}
	ipvs, err := list(v, "ipVersion")
	if err != nil {
		return nil, err
	}
	for _, s := range ipvs {
		switch strings.ToUpper(s) {
		case "IPV4":
			f.IPVersions = append(f.IPVersions, 4)
		case "IPV6":
			f.IPVersions = append(f.IPVersions, 6)
		default:
			return nil, bad("ipVersion", "%q is not IPv4 or IPv6", s)
		}
	}

	switch fm := strings.ToUpper(v.Get("format")); fm {
	case "", "JSON":
	case "CSV":
		q.csv = true
	default:
		return nil, bad("format", "%q is not JSON or CSV", v.Get("format"))
	}
	q.name = v.Get("name")

	// Time.
	dr, ds, de := v.Get("dateRange"), v.Get("dateStart"), v.Get("dateEnd")
	if strings.Contains(dr, ",") {
		return nil, bad("dateRange", "give one range: this API returns one series")
	}
	if dr != "" && (ds != "" || de != "") {
		return nil, bad("dateRange", "give either dateRange or dateStart/dateEnd, not both")
	}
	q.end = now
	switch {
	case ds != "" || de != "":
		if de != "" {
			t, err := time.Parse(time.RFC3339, de)
			if err != nil {
				return nil, bad("dateEnd", "%q is not an RFC 3339 time such as 2026-11-24T00:00:00Z", de)
			}
			q.end = t
		}
		if ds == "" {
			q.start = q.end.Add(-7 * 24 * time.Hour)
		} else {
			t, err := time.Parse(time.RFC3339, ds)
			if err != nil {
				return nil, bad("dateStart", "%q is not an RFC 3339 time such as 2026-11-17T00:00:00Z", ds)
			}
			q.start = t
		}
		if !q.start.Before(q.end) {
			return nil, bad("dateStart", "%s is not before dateEnd %s", q.start.Format(time.RFC3339), q.end.Format(time.RFC3339))
		}
		if q.end.Sub(q.start) > MaxDateRange {
			return nil, bad("dateStart", "the range from dateStart to dateEnd is longer than %d days", int(MaxDateRange/(24*time.Hour)))
		}
	default:
		span := 7 * 24 * time.Hour
		if dr != "" {
			m := rangeRE.FindStringSubmatch(dr)
			if m == nil {
				return nil, bad("dateRange", "%q is not a range such as 1d, 7d or 4w", dr)
			}
			n, _ := strconv.Atoi(m[1])
			unit := 24 * time.Hour
			if m[2] == "w" {
				unit *= 7
			}
			span = time.Duration(n) * unit
			if n == 0 || span > MaxDateRange {
				return nil, bad("dateRange", "%q is out of range: from 1d to %dd", dr, int(MaxDateRange/(24*time.Hour)))
			}
			if m[3] != "" {
				// Radar's control range: the span before the one named,
				// to compare with it (7dcontrol: the week before last).
				q.end = q.end.Add(-span)
			}
		}
		q.start = q.end.Add(-span)
	}
	q.start, q.end = q.start.UTC(), q.end.UTC()
	// Buckets start at whole seconds. A bucket belongs to the range when it
	// starts within it, dateEnd included (as Radar's dateEnd is): the
	// store's filter is [Start, End), so Start is rounded up to a whole
	// second and End is the second after the last one in the range.
	f.Start = q.start.Truncate(time.Second)
	if f.Start.Before(q.start) {
		f.Start = f.Start.Add(time.Second)
	}
	f.End = q.end.Truncate(time.Second).Add(time.Second)

	span := q.end.Sub(q.start)
	switch ai := v.Get("aggInterval"); ai {
	case "":
		switch {
		case span <= 24*time.Hour:
			q.interval = intervals[0]
		case span <= 14*24*time.Hour:
			q.interval = intervals[1]
		case span <= 180*24*time.Hour:
			q.interval = intervals[2]
		default:
			q.interval = intervals[3]
		}
	default:
		i := slices.IndexFunc(intervals, func(iv interval) bool { return iv.param == strings.ToLower(ai) || iv.radar == strings.ToUpper(ai) })
		if i < 0 {
			return nil, bad("aggInterval", "%q is not one of 15m, 1h, 1d, 1w", ai)
		}
		q.interval = intervals[i]
	}
	return q, nil
}
