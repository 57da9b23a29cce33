// Package classify judges a finished connection (from package flow) as
// method.md sections 3 to 6 say: how it ended (the closure), the stage it
// ended in, its tags and its signature, or why it is excluded.
//
// It is a pure function of the connection's ordered client packets; it does
// no I/O, keeps no state and does not aggregate.
//
// # Rules, where method.md leaves a choice
//
//   - Exclusions come first, in this order: a connection whose first packet is
//     not a client SYN (SYN set, ACK clear) is no_syn; one with more than one
//     SYN-flagged packet among its counted packets is multiple_syn. A
//     connection that cannot be judged yet (no RST, no FIN, below the cap,
//     silent for less than the idle timeout) is incomplete, or evicted when it
//     was pushed out of a full table.
//   - The closure is reset if any counted packet has RST; else fin if any has
//     FIN; else cap if the cap was reached; else timeout.
//   - Excluded connections get no stage, no tags and no signature.
//   - post_ack needs every packet before the first RST (or the silence)
//     after the SYN to have ACK set, and at least one such packet; a
//     connection without data that fails this (SYN then a bare FIN or a
//     packet without flags; SYN and RST in one packet) is no_match.
//   - Tags: timeout and reset follow the closure (so a timeout after two data
//     packets, stage no_match, is still tagged timeout). The RST tags count
//     every RST among the counted packets, before and after the first one.
//     The scanner tags (zmap, masscan, nmap) look at the SYN and apply to every
//     judged connection. For ttl_jump and ipid_jump, every RST is compared
//     with the last non-RST packet before it.
//   - Signatures: a FIN before the first RST means none. Post-ACK signatures
//     need exactly SYN then one pure ACK before the RST or silence. Post-PSH
//     signatures need the first RST (or the silence) to follow the first
//     PSH+ACK immediately; when the first RST comes later, the Later
//     signatures apply ("PSH+ACK; Data → ..."), whatever the stage. Non-RST
//     packets after the first RST do not change the signature. The RST
//     variants with several plain RSTs are told apart by their ack numbers:
//     all equal (zero included) is "RST = RST", unequal and none zero is
//     "RST ≠ RST", unequal with a zero is "RST; RST0".
package classify

import (
	"github.com/connscope/connscope/classifier/flow"
	"github.com/connscope/connscope/packet"
)

// Stage is where a connection ended (Radar's names).
type Stage uint8

// Stages. StageNone is the stage of an excluded connection.
const (
	StageNone Stage = iota
	PostSYN
	PostACK
	PostPSH
	LaterInFlow
	NoMatch
)

// Stages lists the stages of judged connections, in Radar's order.
var Stages = [...]Stage{PostSYN, PostACK, PostPSH, LaterInFlow, NoMatch}

var stageNames = [...]string{"", "post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"}

func (s Stage) String() string { return stageNames[s] }

// Closure is how a connection ended (method.md section 3).
type Closure uint8

// Closures.
const (
	ClosureNone Closure = iota // excluded before judging
	ClosureReset
	ClosureFIN
	ClosureCap
	ClosureTimeout
	ClosureIncomplete
)

var closureNames = [...]string{"", "reset", "fin", "cap", "timeout", "incomplete"}

func (c Closure) String() string { return closureNames[c] }

// Exclusion says why a connection was not classified.
type Exclusion uint8

// Exclusions.
const (
	Included Exclusion = iota
	NoSYN
	MultipleSYN
	Incomplete
	Evicted
)

// Exclusions lists the reasons, in output order.
var Exclusions = [...]Exclusion{NoSYN, MultipleSYN, Incomplete, Evicted}

var exclusionNames = [...]string{"", "no_syn", "multiple_syn", "incomplete", "evicted"}

func (e Exclusion) String() string { return exclusionNames[e] }

// Tag is one tag of method.md section 5; Tags is a set of them.
type Tag uint8

// Tags, in the seed's hierarchical order, then those beyond it.
const (
	TagTimeout Tag = iota
	TagReset
	TagFIN
	TagSingleRST
	TagMultipleRSTs
	TagAckNumSame
	TagAckNumSame0
	TagAckNumDiff
	TagAckNumDiff0
	TagSingleRSTACK
	TagMultipleRSTACKs
	TagRSTAndRSTACKs
	TagZMap
	TagMasscan
	TagNmap
	TagTTLJump
	TagIPIDJump
	NumTags
)

var tagNames = [NumTags]string{
	"timeout", "reset", "fin", "single_rst", "multiple_rsts", "acknumsame", "acknumsame0",
	"acknumdiff", "acknumdiff0", "single_rstack", "multiple_rstacks", "rst_and_rstacks",
	"zmap", "masscan", "nmap", "ttl_jump", "ipid_jump",
}

func (t Tag) String() string { return tagNames[t] }

// TagByName returns the tag with the given name.
func TagByName(name string) (Tag, bool) {
	for i, n := range tagNames {
		if n == name {
			return Tag(i), true
		}
	}
	return 0, false
}

// Tags is a set of tags.
type Tags uint32

// Has reports whether t is in the set.
func (ts Tags) Has(t Tag) bool { return ts&(1<<t) != 0 }

func (ts *Tags) add(t Tag) { *ts |= 1 << t }

// Names returns the names of the tags in the set, in tag order; never nil.
func (ts Tags) Names() []string {
	out := []string{}
	for t := Tag(0); t < NumTags; t++ {
		if ts.Has(t) {
			out = append(out, tagNames[t])
		}
	}
	return out
}

// Signature is one of the paper's 19 signatures (method.md section 6), or
// SigNone.
type Signature uint8

// Signatures.
const (
	SigNone Signature = iota
	SigSYNTimeout
	SigSYNRST
	SigSYNRSTACK
	SigSYNRSTAndRSTACK
	SigACKTimeout
	SigACKRST
	SigACKRSTs
	SigACKRSTACK
	SigACKRSTACKs
	SigPSHTimeout
	SigPSHRST
	SigPSHRSTACK
	SigPSHRSTAndRSTACK
	SigPSHRSTACKs
	SigPSHRSTSame
	SigPSHRSTDiff
	SigPSHRSTZero
	SigDataRST
	SigDataRSTACK
	NumSignatures
)

var signatureNames = [NumSignatures]string{
	"",
	"SYN → ∅", "SYN → RST", "SYN → RST+ACK", "SYN → RST; RST+ACK",
	"SYN; ACK → ∅", "SYN; ACK → RST", "SYN; ACK → RST; RST", "SYN; ACK → RST+ACK", "SYN; ACK → RST+ACK; RST+ACK",
	"PSH+ACK → ∅", "PSH+ACK → RST", "PSH+ACK → RST+ACK", "PSH+ACK → RST; RST+ACK", "PSH+ACK → RST+ACK; RST+ACK",
	"PSH+ACK → RST = RST", "PSH+ACK → RST ≠ RST", "PSH+ACK → RST; RST0",
	"PSH+ACK; Data → RST", "PSH+ACK; Data → RST+ACK",
}

func (s Signature) String() string { return signatureNames[s] }

// SignatureByName returns the signature with the given string.
func SignatureByName(name string) (Signature, bool) {
	for i, n := range signatureNames {
		if n == name {
			return Signature(i), true
		}
	}
	return 0, false
}

// Result is the judgement of one connection.
type Result struct {
	Closure   Closure
	Stage     Stage
	Tags      Tags
	Signature Signature
	Excluded  Exclusion
}

// Anomalous reports whether the connection ended early in a reset or timeout
// (a stage other than no_match).
func (r Result) Anomalous() bool { return r.Stage != StageNone && r.Stage != NoMatch }

const (
	optMSS     = 2
	zmapIPID   = 54321
	zmapWindow = 65535
	scanWindow = 1024
)

// Classify judges a finished connection from the summary of its counted
// packets (flow.Summary), which the flow table accumulates in timestamp,
// then sequence order.
func Classify(c *flow.Conn) Result {
	s := &c.Summary
	if s.Packets == 0 || !s.FirstIsSYN {
		return Result{Excluded: NoSYN}
	}
	if s.SYNs > 1 {
		return Result{Excluded: MultipleSYN}
	}

	var r Result
	switch {
	case s.RSTs+s.RSTACKs > 0:
		r.Closure = ClosureReset
	case s.FIN:
		r.Closure = ClosureFIN
	case s.Packets >= c.Cap:
		r.Closure = ClosureCap
	case c.Silent:
		r.Closure = ClosureTimeout
	case c.End == flow.EndEvicted:
		return Result{Closure: ClosureIncomplete, Excluded: Evicted}
	default:
		return Result{Closure: ClosureIncomplete, Excluded: Incomplete}
	}

	switch r.Closure {
	case ClosureReset, ClosureTimeout:
		switch {
		case s.Pre == 1:
			r.Stage = PostSYN
		case s.Data == 0 && s.Pre >= 2 && !s.NonACK:
			r.Stage = PostACK
		case s.Data == 0:
			// No ACK after the SYN (a bare FIN, a packet without flags),
			// or no SYN before the RST (SYN and RST in one packet).
			r.Stage = NoMatch
		case s.Data == 1:
			r.Stage = PostPSH
		case r.Closure == ClosureReset:
			r.Stage = LaterInFlow
		default:
			r.Stage = NoMatch
		}
	default:
		r.Stage = NoMatch
	}

	r.Tags = scannerTags(c)
	switch r.Closure {
	case ClosureTimeout:
		r.Tags.add(TagTimeout)
	case ClosureReset:
		r.Tags |= resetTags(c, r.Tags)
	}

	if r.Stage != NoMatch && !s.FINBeforeRST {
		r.Signature = signature(r, s)
	}
	return r
}

func scannerTags(c *flow.Conn) Tags {
	var ts Tags
	if !c.HasSYN {
		return ts
	}
	if c.IPVersion == 4 && c.SYNIPID == zmapIPID && c.SYN.Window == zmapWindow {
		ts.add(TagZMap)
	}
	if c.IPVersion == 4 && c.SYN.Window == scanWindow {
		server := packet.IPv4Of(c.ServerIP)
		if uint16(server^uint32(c.ServerPort)^c.SYNSeq) == c.SYNIPID {
			ts.add(TagMasscan)
		}
	}
	if c.SYN.Window == scanWindow && c.SYN.NumOptions == 1 && c.SYN.FirstOption == optMSS && !c.SYN.DF {
		ts.add(TagNmap)
	}
	return ts
}

func resetTags(c *flow.Conn, scanner Tags) Tags {
	s := &c.Summary
	var ts Tags
	ts.add(TagReset)
	if s.FIN {
		ts.add(TagFIN)
	}
	switch {
	case s.RSTs > 0 && s.RSTACKs > 0:
		ts.add(TagRSTAndRSTACKs)
	case s.RSTs == 1:
		ts.add(TagSingleRST)
	case s.RSTs > 1:
		ts.add(TagMultipleRSTs)
		ts.add(ackNumTag(s.RSTAcks))
	case s.RSTACKs == 1:
		ts.add(TagSingleRSTACK)
	default:
		ts.add(TagMultipleRSTACKs)
	}
	// An RST whose TTL jumps from the SYN's is evidence only when the SYN
	// is not a scanner's (scanners craft their SYNs; the RST is the
	// kernel's).
	isScanner := scanner&(1<<TagZMap|1<<TagMasscan|1<<TagNmap) != 0
	if s.TTLJump || (s.TTLJumpFromFirst && !isScanner) {
		ts.add(TagTTLJump)
	}
	if s.IPIDJump {
		ts.add(TagIPIDJump)
	}
	return ts
}

// ackNumTag tells the plain RSTs (ACK clear) apart by their ack numbers.
func ackNumTag(a flow.RSTAcks) Tag {
	switch {
	case a.AllSame && a.First == 0:
		return TagAckNumSame0
	case a.AllSame:
		return TagAckNumSame
	case a.AnyZero:
		return TagAckNumDiff0
	default:
		return TagAckNumDiff
	}
}

func signature(r Result, s *flow.Summary) Signature {
	reset := r.Closure == ClosureReset
	rsts, rstacks := s.RSTs, s.RSTACKs
	switch {
	case s.Pre == 1: // only the SYN
		switch {
		case !reset:
			return SigSYNTimeout
		case rstacks == 0:
			return SigSYNRST
		case rsts == 0:
			return SigSYNRSTACK
		default:
			return SigSYNRSTAndRSTACK
		}
	case s.Data == 0:
		if s.Pre != 2 || !s.SecondPureACK {
			return SigNone
		}
		switch {
		case !reset:
			return SigACKTimeout
		case rstacks == 0 && rsts == 1:
			return SigACKRST
		case rstacks == 0:
			return SigACKRSTs
		case rsts == 0 && rstacks == 1:
			return SigACKRSTACK
		case rsts == 0:
			return SigACKRSTACKs
		}
		return SigNone
	}
	if !s.DataACK {
		return SigNone // the data packet is not a PSH+ACK
	}
	if !s.DataLast { // something came between the PSH+ACK and the RST or silence
		if !reset {
			return SigNone
		}
		switch {
		case rstacks == 0:
			return SigDataRST
		case rsts == 0:
			return SigDataRSTACK
		}
		return SigNone
	}
	switch {
	case !reset:
		return SigPSHTimeout
	case rsts == 1 && rstacks == 0:
		return SigPSHRST
	case rsts == 0 && rstacks == 1:
		return SigPSHRSTACK
	case rsts > 0 && rstacks > 0:
		return SigPSHRSTAndRSTACK
	case rsts == 0:
		return SigPSHRSTACKs
	}
	switch ackNumTag(s.RSTAcks) {
	case TagAckNumSame, TagAckNumSame0:
		return SigPSHRSTSame
	case TagAckNumDiff:
		return SigPSHRSTDiff
	default:
		return SigPSHRSTZero
	}
}
