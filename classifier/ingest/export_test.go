package ingest

import (
	"google.golang.org/protobuf/proto"

	"github.com/connscope/connscope/packet/ingestpb"
)

// SetAfterAccept installs a hook run after a batch is accepted, before
// its ack.
func (s *Server) SetAfterAccept(f func(*ingestpb.Frame)) { s.afterAccept = f }

// Accept runs the server side of one batch, without a stream: its wire
// encoding decoded and accepted as Push does.
func Accept(s *Server, b *ingestpb.PacketBatch) error {
	data, err := proto.Marshal(b)
	if err != nil {
		return err
	}
	return AcceptWire(s, data)
}

// AcceptWire accepts one batch's wire encoding as Push does.
func AcceptWire(s *Server, data []byte) error {
	var f ingestpb.Frame
	if err := ingestpb.DecodeFrame(&f, data); err != nil {
		return s.reject(f.Sequence, "%v", err)
	}
	return s.accept(&f, data)
}
