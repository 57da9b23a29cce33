package report

import (
	"encoding/json"
	"io"
	"time"

	"github.com/connscope/connscope/classifier/classify"
)

// RadarMeta is the meta object of a Radar response.
type RadarMeta struct {
	DateRange      []DateRange    `json:"dateRange"`
	LastUpdated    string         `json:"lastUpdated"`
	Normalization  string         `json:"normalization"`
	ConfidenceInfo ConfidenceInfo `json:"confidenceInfo"`
	Units          []Unit         `json:"units"`
}

// Unit is one entry of meta.units: what the values are.
type Unit struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// PercentUnits is meta.units of a response whose values are percentages.
func PercentUnits() []Unit { return []Unit{{Name: "*", Value: "percentage"}} }

// DateRange is one entry of meta.dateRange.
type DateRange struct {
	StartTime string `json:"startTime"`
	EndTime   string `json:"endTime"`
}

// ConfidenceInfo is Radar's (always empty here) confidence annotation.
type ConfidenceInfo struct {
	Level       *int  `json:"level"`
	Annotations []any `json:"annotations"`
}

// StageShares is Radar's summary_0 object: percentage strings by stage.
type StageShares struct {
	PostSYN     string `json:"post_syn"`
	PostACK     string `json:"post_ack"`
	PostPSH     string `json:"post_psh"`
	LaterInFlow string `json:"later_in_flow"`
	NoMatch     string `json:"no_match"`
}

// RadarSummary is the response of /radar/tcp_resets_timeouts/summary, with
// the counts Radar does not have (yet) beside summary_0.
type RadarSummary struct {
	Success  bool          `json:"success"`
	Errors   []any         `json:"errors"`
	Messages []any         `json:"messages"`
	Result   SummaryResult `json:"result"`
}

// SummaryResult is the result object.
type SummaryResult struct {
	Meta     RadarMeta   `json:"meta"`
	Summary0 StageShares `json:"summary_0"`
	// Beyond Radar: counts.
	Connections Counts         `json:"connections"`
	Tags        map[string]int `json:"tags"`
	Signatures  map[string]int `json:"signatures"`
	Excluded    map[string]int `json:"excluded"`
}

// Counts are connection counts by stage.
type Counts struct {
	Classified int            `json:"classified"`
	Excluded   int            `json:"excluded"`
	ByStage    map[string]int `json:"by_stage"`
}

// Shares returns the stage shares of s in Radar's shape.
func Shares(s *Summary) StageShares {
	pct := func(st classify.Stage) string { return Percent(s.Share(s.Stages[st])) }
	return StageShares{
		PostSYN: pct(classify.PostSYN), PostACK: pct(classify.PostACK), PostPSH: pct(classify.PostPSH),
		LaterInFlow: pct(classify.LaterInFlow), NoMatch: pct(classify.NoMatch),
	}
}

// Radar builds the summary response for s; now stamps lastUpdated.
func Radar(s *Summary, now time.Time) RadarSummary {
	res := SummaryResult{
		Meta: RadarMeta{
			DateRange:      []DateRange{{StartTime: radarTime(s.First), EndTime: radarTime(s.Last)}},
			LastUpdated:    now.UTC().Format(time.RFC3339),
			Normalization:  "PERCENTAGE",
			ConfidenceInfo: ConfidenceInfo{Annotations: []any{}},
			Units:          PercentUnits(),
		},
		Summary0: Shares(s),
		Connections: Counts{
			Classified: s.Judged, Excluded: s.Excluded(), ByStage: map[string]int{},
		},
		Tags: map[string]int{}, Signatures: map[string]int{}, Excluded: map[string]int{},
	}
	for _, st := range classify.Stages {
		res.Connections.ByStage[st.String()] = s.Stages[st]
	}
	for t := classify.Tag(0); t < classify.NumTags; t++ {
		res.Tags[t.String()] = s.Tags[t]
	}
	for sig := classify.SigNone + 1; sig < classify.NumSignatures; sig++ {
		res.Signatures[sig.String()] = s.Sigs[sig]
	}
	for _, e := range classify.Exclusions {
		res.Excluded[e.String()] = s.Exclude[e]
	}
	return RadarSummary{Success: true, Errors: []any{}, Messages: []any{}, Result: res}
}

func radarTime(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339)
}

// WriteRadar writes the summary response as indented JSON.
func WriteRadar(w io.Writer, s *Summary, now time.Time) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(Radar(s, now))
}
