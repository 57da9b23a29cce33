// Package offline runs the classification engine over capture files: it
// reads them (merged by timestamp, as one stream), assembles connections with
// package flow, judges them with package classify, and hands each one to a
// callback. It renders nothing (see package report) and keeps no results.
//
// A corrupt or truncated file stops the reading of that file only: the
// packets read before the bad byte still count, the other files are read to
// their end, every open connection is judged at the end, and the errors are
// returned for the caller to report. Frames of a link type the reader
// cannot strip (one interface of a pcapng file, say) are skipped and
// counted, the rest of the file is read, and the first of them is reported
// as an error with the count.
package offline

import (
	"container/heap"
	"errors"
	"fmt"
	"io"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/classifier/classify"
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/packet"
)

// Stats sums what was read and assembled.
type Stats struct {
	Files              int   `json:"files"`
	Frames             int64 `json:"frames"`
	Bytes              int64 `json:"bytes"`
	SkippedNonTCP      int64 `json:"skipped_non_tcp"`
	SkippedUndecodable int64 `json:"skipped_undecodable"`
	// SkippedLinkType counts frames of link types the reader cannot strip.
	SkippedLinkType int64      `json:"skipped_unsupported_link_type"`
	Flow            flow.Stats `json:"flow"`
}

// Run classifies the packets of files (paths as capture.Open takes them:
// "-" is standard input, gzip is decompressed). emit receives every finished
// connection with its judgement; the Conn is only valid during the call.
// The returned error joins the errors of files that could not be read to
// their end; the connections they held up to that point were emitted.
func Run(files []string, cfg flow.Config, emit func(*flow.Conn, classify.Result)) (Stats, error) {
	var st Stats
	if err := CheckNames(files); err != nil {
		return st, err
	}
	tab, err := flow.New(cfg, func(c *flow.Conn) { emit(c, classify.Classify(c)) })
	if err != nil {
		return st, err
	}
	defer tab.Close()
	var errs []error
	var srcs []*source
	for _, name := range files {
		s, err := open(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		srcs = append(srcs, s)
	}
	st.Files = len(files)

	// Merge the files by timestamp: a heap of sources keyed by the
	// timestamp of their next packet.
	h := make(sourceHeap, 0, len(srcs))
	for _, s := range srcs {
		if s.advance() {
			h = append(h, s)
		}
	}
	heap.Init(&h)
	// Packets go to the table in batches (see flow.Table.AddBatch).
	var batch [256]packet.Record
	n := 0
	add := func(r *packet.Record) error {
		batch[n] = *r
		if n++; n == len(batch) {
			n = 0
			return tab.AddBatch(batch[:])
		}
		return nil
	}
	for len(h) > 0 {
		s := h[0]
		if len(h) == 1 {
			// One source left: no merging needed; read straight into the
			// batch.
			if err := add(&s.rec); err != nil {
				return st, err
			}
			for {
				if n == len(batch) {
					if err := tab.AddBatch(batch[:]); err != nil {
						return st, err
					}
					n = 0
				}
				if !s.advanceInto(&batch[n]) {
					break
				}
				n++
			}
			heap.Pop(&h)
			break
		}
		if err := add(&s.rec); err != nil {
			return st, err
		}
		if s.advance() {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	if err := tab.AddBatch(batch[:n]); err != nil {
		return st, err
	}
	tab.Flush()

	for _, s := range srcs {
		rs := s.r.Stats()
		st.Frames += rs.Frames
		st.Bytes += rs.Bytes
		st.SkippedNonTCP += rs.SkippedNonTCP
		st.SkippedUndecodable += rs.SkippedUndecodable
		st.SkippedLinkType += s.linkSkipped
		if s.linkErr != nil {
			errs = append(errs, fmt.Errorf("%w; %d frames of unsupported link types skipped, the file's other frames read", s.linkErr, s.linkSkipped))
		}
		if s.err != nil {
			errs = append(errs, s.err)
		}
		s.closer.Close()
	}
	st.Flow = tab.Stats()
	return st, errors.Join(errs...)
}

// CheckNames reports what makes a list of files unreadable before any is
// opened: standard input ("-", see capture.Open) named more than once.
func CheckNames(files []string) error {
	stdin := 0
	for _, name := range files {
		if name == capture.Stdin {
			stdin++
		}
	}
	if stdin > 1 {
		return fmt.Errorf("standard input (%q) is named %d times: it can be read once", capture.Stdin, stdin)
	}
	return nil
}

type source struct {
	closer io.Closer
	r      *capture.Reader
	rec    packet.Record
	err    error
	// linkErr is the first frame of a link type the reader cannot strip,
	// linkSkipped the number of such frames.
	linkErr     *capture.LinkTypeError
	linkSkipped int64
}

func open(name string) (*source, error) {
	r, c, err := capture.Open(name)
	if err != nil {
		return nil, err
	}
	return &source{closer: c, r: r}, nil
}

// advance reads the next packet into s.rec; false at the end or on error
// (kept in s.err).
func (s *source) advance() bool { return s.advanceInto(&s.rec) }

// advanceInto reads the next packet into rec, skipping frames of link
// types the reader cannot strip.
func (s *source) advanceInto(rec *packet.Record) bool {
	for {
		err := s.r.Next(rec)
		if err == nil {
			return true
		}
		if !s.skip(err) {
			return false
		}
	}
}

// skip reports whether the error from the reader is a frame to skip (one
// of a link type the reader cannot strip, counted) rather than the end of
// the file (false) or an error (false, kept in s.err). It is apart from
// advanceInto because errors.As needs the address of its target, which
// puts the target on the heap: declared in advanceInto, that was one
// allocation for every packet read.
func (s *source) skip(err error) bool {
	var le *capture.LinkTypeError
	switch {
	case errors.Is(err, io.EOF):
		return false
	case errors.As(err, &le):
		if s.linkErr == nil {
			s.linkErr = le
		}
		s.linkSkipped++
		return true
	}
	s.err = err // the reader names its file in every error
	return false
}

type sourceHeap []*source

func (h sourceHeap) Len() int           { return len(h) }
func (h sourceHeap) Less(i, j int) bool { return h[i].rec.Timestamp < h[j].rec.Timestamp }
func (h sourceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *sourceHeap) Push(x any)        { *h = append(*h, x.(*source)) }
func (h *sourceHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	*h = old[:len(old)-1]
	return s
}
