// Package report renders classified connections for people and programs:
// JSON Lines (one object per connection), the Radar summary shape, and a
// readable table. It counts what it is given; it does not classify, read
// captures or store anything.
package report

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
)

// Connection is one classified connection, flattened for rendering.
type Connection struct {
	Client, Server         netip.Addr
	ClientPort, ServerPort uint16
	IPVersion              uint8
	FirstSeen, LastSeen    int64 // ns since the epoch
	Packets                int
	Result                 classify.Result
}

// FromConn flattens a finished connection and its judgement.
func FromConn(c *flow.Conn, r classify.Result) Connection {
	return Connection{
		Client: c.Client(), Server: c.Server(),
		ClientPort: c.ClientPort, ServerPort: c.ServerPort,
		IPVersion: c.IPVersion,
		Packets:   c.Summary.Packets,
		FirstSeen: c.Summary.FirstSeen,
		LastSeen:  c.Summary.LastSeen,
		Result:    r,
	}
}

// AppendJSON appends the JSON Lines object of c (with its newline) to b. The
// keys are the `connscope classify --format json` contract.
func AppendJSON(b []byte, c *Connection) []byte {
	b = append(b, `{"src_ip":"`...)
	b = c.Client.AppendTo(b)
	b = append(b, `","src_port":`...)
	b = strconv.AppendUint(b, uint64(c.ClientPort), 10)
	b = append(b, `,"dst_ip":"`...)
	b = c.Server.AppendTo(b)
	b = append(b, `","dst_port":`...)
	b = strconv.AppendUint(b, uint64(c.ServerPort), 10)
	b = append(b, `,"ip_version":`...)
	b = strconv.AppendUint(b, uint64(c.IPVersion), 10)
	b = append(b, `,"first_seen":"`...)
	b = appendTime(b, c.FirstSeen)
	b = append(b, `","last_seen":"`...)
	b = appendTime(b, c.LastSeen)
	b = append(b, `","packets":`...)
	b = strconv.AppendInt(b, int64(c.Packets), 10)
	b = append(b, `,"stage":"`...)
	b = append(b, c.Result.Stage.String()...)
	b = append(b, `","tags":[`...)
	first := true
	for t := classify.Tag(0); t < classify.NumTags; t++ {
		if c.Result.Tags.Has(t) {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '"')
			b = append(b, t.String()...)
			b = append(b, '"')
		}
	}
	b = append(b, `],"signature":"`...)
	b = append(b, c.Result.Signature.String()...)
	b = append(b, `","excluded":"`...)
	b = append(b, c.Result.Excluded.String()...)
	b = append(b, "\"}\n"...)
	return b
}

func appendTime(b []byte, ns int64) []byte {
	return time.Unix(0, ns).UTC().AppendFormat(b, time.RFC3339Nano)
}

// Summary counts classified connections.
type Summary struct {
	// Judged connections (not excluded), by stage.
	Judged  int
	Stages  [len(classify.Stages) + 1]int // indexed by classify.Stage
	Tags    [classify.NumTags]int
	Sigs    [classify.NumSignatures]int
	Exclude [len(classify.Exclusions) + 1]int // indexed by classify.Exclusion
	// First and Last are the earliest and latest packet timestamps seen.
	First, Last int64
	// Anomalous keeps the first MaxAnomalous anomalous connections;
	// AnomalousTotal counts all of them.
	Anomalous      []Connection
	AnomalousTotal int
	MaxAnomalous   int
}

// Add counts one connection.
func (s *Summary) Add(c *Connection) {
	if c.FirstSeen != 0 && (s.First == 0 || c.FirstSeen < s.First) {
		s.First = c.FirstSeen
	}
	if c.LastSeen > s.Last {
		s.Last = c.LastSeen
	}
	r := c.Result
	if r.Excluded != classify.Included {
		s.Exclude[r.Excluded]++
		return
	}
	s.Judged++
	s.Stages[r.Stage]++
	for t := classify.Tag(0); t < classify.NumTags; t++ {
		if r.Tags.Has(t) {
			s.Tags[t]++
		}
	}
	s.Sigs[r.Signature]++
	if r.Anomalous() {
		s.AnomalousTotal++
		if len(s.Anomalous) < s.MaxAnomalous {
			s.Anomalous = append(s.Anomalous, *c)
		}
	}
}

// Excluded returns the number of excluded connections.
func (s *Summary) Excluded() int {
	n := 0
	for _, v := range s.Exclude {
		n += v
	}
	return n
}

// Share returns n as a percentage of the judged connections.
func (s *Summary) Share(n int) float64 {
	if s.Judged == 0 {
		return 0
	}
	return 100 * float64(n) / float64(s.Judged)
}

// Percent formats a share the way Radar does: a decimal string.
func Percent(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }

// WriteTable writes the readable summary.
func WriteTable(w io.Writer, s *Summary, extra []string) error {
	p := &printer{w: w}
	for _, l := range extra {
		p.f("%s\n", l)
	}
	if s.First != 0 {
		p.f("Time span: %s to %s\n", time.Unix(0, s.First).UTC().Format(time.RFC3339), time.Unix(0, s.Last).UTC().Format(time.RFC3339))
	}
	p.f("Connections: %d classified, %d excluded", s.Judged, s.Excluded())
	if s.Excluded() > 0 {
		p.f(" (")
		sep := ""
		for _, e := range classify.Exclusions {
			if n := s.Exclude[e]; n > 0 {
				p.f("%s%s %d", sep, e, n)
				sep = ", "
			}
		}
		p.f(")")
	}
	p.f("\n")
	anomalous := s.Judged - s.Stages[classify.NoMatch]
	p.f("Ended early in a reset or timeout: %d (%s%%)\n\n", anomalous, Percent(s.Share(anomalous)))

	p.f("%-15s %10s %9s\n", "STAGE", "CONNS", "SHARE%")
	for _, st := range classify.Stages {
		p.f("%-15s %10d %9s\n", st, s.Stages[st], Percent(s.Share(s.Stages[st])))
	}
	p.f("\n%-17s %10s %9s\n", "TAG", "CONNS", "SHARE%")
	for t := classify.Tag(0); t < classify.NumTags; t++ {
		if s.Tags[t] > 0 {
			p.f("%-17s %10d %9s\n", t, s.Tags[t], Percent(s.Share(s.Tags[t])))
		}
	}
	p.f("\n%-30s %10s %9s\n", "SIGNATURE", "CONNS", "SHARE%")
	for sig := classify.SigNone + 1; sig < classify.NumSignatures; sig++ {
		if s.Sigs[sig] > 0 {
			p.f("%-30s %10d %9s\n", padRunes(sig.String(), 30), s.Sigs[sig], Percent(s.Share(s.Sigs[sig])))
		}
	}
	if s.AnomalousTotal > 0 {
		p.f("\nAnomalous connections (%d", s.AnomalousTotal)
		if len(s.Anomalous) < s.AnomalousTotal {
			p.f(", first %d shown; --format json lists all", len(s.Anomalous))
		}
		p.f("):\n")
		slices.SortStableFunc(s.Anomalous, func(a, b Connection) int { return cmp.Compare(a.FirstSeen, b.FirstSeen) })
		for i := range s.Anomalous {
			c := &s.Anomalous[i]
			p.f("  %s %s -> %s  %-13s %-28s %s\n",
				time.Unix(0, c.FirstSeen).UTC().Format("15:04:05.000"),
				netip.AddrPortFrom(c.Client, c.ClientPort), netip.AddrPortFrom(c.Server, c.ServerPort),
				c.Result.Stage, padRunes(c.Result.Signature.String(), 28), joinTags(c.Result.Tags))
		}
	}
	return p.err
}

func joinTags(t classify.Tags) string {
	out := ""
	for i, n := range t.Names() {
		if i > 0 {
			out += ","
		}
		out += n
	}
	return out
}

// padRunes pads s with spaces to n runes (fmt pads by bytes, and the
// signatures hold multi-byte arrows).
func padRunes(s string, n int) string {
	for c := len([]rune(s)); c < n; c++ {
		s += " "
	}
	return s
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, a ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, a...)
	}
}
