package ingestpb

import (
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Wire is a message as its wire encoding. Sent or received through
// WireCodec, its bytes go on the wire as they are, or come off it as they
// are, with no message built (the agent writes batches with AppendBatch,
// the classifier reads them with DecodeFrame).
type Wire struct{ B []byte }

// WireCodec is gRPC's protobuf codec (same name, so the content type on
// the wire is unchanged), except for *Wire: Marshal copies its bytes into
// a buffer of gRPC's pool, and Unmarshal copies the message received into
// it, reusing its storage. Install it with grpc.ForceServerCodecV2 or the
// grpc.ForceCodecV2 call option.
type WireCodec struct{}

var protoCodec = encoding.GetCodecV2(protocodec.Name)

// Name is "proto".
func (WireCodec) Name() string { return protocodec.Name }

// Marshal encodes v.
func (WireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if w, ok := v.(*Wire); ok {
		return mem.BufferSlice{mem.Copy(w.B, mem.DefaultBufferPool())}, nil
	}
	return protoCodec.Marshal(v)
}

// Unmarshal decodes data into v.
func (WireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	w, ok := v.(*Wire)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	w.B = w.B[:0]
	for _, buf := range data {
		w.B = append(w.B, buf.ReadOnlyData()...)
	}
	return nil
}
