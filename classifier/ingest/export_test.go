package ingest

import (
	"context"

	"github.com/connscope/connscope/packet/ingestpb"
)

// SetAfterAccept installs a hook run after a batch is accepted, before
// its ack.
func (s *Server) SetAfterAccept(f func(*ingestpb.PacketBatch)) { s.afterAccept = f }

// Accept runs the server side of one batch, without a stream.
func Accept(s *Server, b *ingestpb.PacketBatch) error { return s.accept(context.Background(), b) }
