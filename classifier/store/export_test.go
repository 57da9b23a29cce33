package store

import "time"

// SetSegmentAge makes Commit begin a new journal segment once the one
// written is d old, until the returned function restores the default.
func SetSegmentAge(d time.Duration) (restore func()) {
	old := segmentAge
	segmentAge = d
	return func() { segmentAge = old }
}
