package ingest

import "github.com/connscope/connscope/packet/ingestpb"

// SetAfterAccept installs a hook run after a batch is accepted, before
// its ack.
func (s *Server) SetAfterAccept(f func(*ingestpb.PacketBatch)) { s.afterAccept = f }
