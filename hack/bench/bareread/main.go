// Command bareread is the floor of the classification benchmark
// (hack/bench/run.sh): it reads capture files with classifier/capture the
// way `connscope classify` does, and does nothing with what it reads.
//
//	bareread [-decode] FILE...
//
// Without -decode it loops Reader.NextFrame (the file format only: record
// headers and frame bytes); with -decode it loops Reader.Next, which also
// strips the link layer and decodes the IP and TCP headers into a
// packet.Record. It prints the frames (and TCP packets) read and the bytes
// of the files to stdout.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

func main() {
	decode := flag.Bool("decode", false, "decode each TCP packet into a record (Reader.Next) instead of reading bare frames (Reader.NextFrame)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: bareread [-decode] FILE...")
		os.Exit(2)
	}
	var frames, tcp, bytes int64
	for _, name := range flag.Args() {
		st, err := read(name, *decode)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bareread:", err)
			os.Exit(1)
		}
		frames += st.Frames
		tcp += st.TCP
		bytes += st.Bytes
	}
	if *decode {
		fmt.Printf("frames %d tcp %d bytes %d\n", frames, tcp, bytes)
	} else {
		fmt.Printf("frames %d bytes %d\n", frames, bytes)
	}
}

func read(name string, decode bool) (capture.Stats, error) {
	f, err := os.Open(name)
	if err != nil {
		return capture.Stats{}, err
	}
	defer f.Close()
	r, err := capture.NewReader(f, name)
	if err != nil {
		return capture.Stats{}, err
	}
	var rec packet.Record
	for {
		if decode {
			err = r.Next(&rec)
		} else {
			_, _, _, err = r.NextFrame()
		}
		if errors.Is(err, io.EOF) {
			return r.Stats(), nil
		}
		var lt *capture.LinkTypeError
		if errors.As(err, &lt) {
			continue
		}
		if err != nil {
			return r.Stats(), err
		}
	}
}
