package ship_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/connscope/connscope/agent/ship"
	"github.com/connscope/connscope/packet"
)

// The agent's shape: a sink chosen by URL, a queue in front of it, Run in
// a goroutine of its own, and Offer on the capture path.
func Example() {
	dir, err := os.MkdirTemp("", "ship-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	// In a cluster: "grpcs://classifier.connscope-system.svc:9443" with
	// Options{Node: ..., Policy: ..., TokenFile: ...}.
	sink, err := ship.Open("file://"+filepath.Join(dir, "agent.pcapng"), ship.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sink.Close()

	q := ship.NewQueue(sink, ship.QueueConfig{Capacity: 1 << 16, BatchSize: 1024})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()

	// The capture callback: Offer copies the record and never blocks.
	var rec packet.Record
	rec.Timestamp = 1_700_000_000_000_000_000
	rec.SetSrc(netip.MustParseAddr("198.51.100.7"))
	rec.SetDst(netip.MustParseAddr("192.0.2.10"))
	rec.SrcPort, rec.DstPort, rec.Flags = 40000, 443, packet.SYN
	for range 3 {
		q.Offer(&rec) // false when full: counted in Stats().DroppedQueueFull
	}

	// Shutdown: Run ships what is queued (within DrainTimeout) and returns.
	cancel()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	s := q.Stats()
	fmt.Printf("offered %d, shipped %d in %d batch, dropped %d\n", s.Offered, s.Shipped, s.Batches, s.DroppedQueueFull)
	// Output: offered 3, shipped 3 in 1 batch, dropped 0
}
