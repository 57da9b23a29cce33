package capture

import (
	"errors"
	"io"
	"os"

	"github.com/connscope/connscope/packet"
)

// ReadFile returns every TCP packet record of the capture file at path, in
// file order. It holds them all in memory: for tests and small files; a
// Reader streams.
func ReadFile(path string) ([]packet.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := NewReader(f, path)
	if err != nil {
		return nil, err
	}
	var recs []packet.Record
	for {
		var rec packet.Record
		err := r.Next(&rec)
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, rec)
	}
}
