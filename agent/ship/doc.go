// Package ship ships packet records from the capture path to a sink
// without ever blocking the capture.
//
// A Queue sits between the capture (the NFLOG reader) and a Sink. Offer
// copies a record into a ring allocated once by NewQueue and returns at
// once: false, with the record counted as dropped, when the ring is full.
// A queue's only producer may instead decode records straight into the
// ring's free cells (Reserve, then Commit), as the agent's NFLOG reader
// does.
// Run is the sender loop: it hands the sink batches that are runs of the
// ring's cells (not copies; their cells are freed once the sink took
// them), and retries a batch the sink failed with exponential backoff
// while new records go on filling the rest of the ring (and are dropped,
// counted, when it is full). Memory is bounded by QueueConfig.Capacity.
//
// Sinks are chosen by URL (Open):
//
//	grpc://host:port        the classifier's Ingest service, plaintext (tests, or in-cluster
//	                        behind a network policy)
//	grpcs://host:port       the same over TLS (Options.TLSConfig, else the system roots)
//	file:///abs/path.pcapng a pcapng file of header-only raw-IP packets that
//	                        `connscope classify` reads
//	clickhouse://host:port/db the packets table of a ClickHouse database (HTTP
//	                        interface; credentials from CONNSCOPE_CLICKHOUSE_USERNAME
//	                        and _PASSWORD), which classifier/chstore's replicas read
//
// The gRPC sink speaks packet/ingestpb's Ingest.Push: one stream, one
// batch in flight, Send returns nil only when the receiver acknowledged
// the batch. A batch sent again after a failure keeps its sequence number,
// so a receiver can drop the duplicate when only the ack was lost.
//
// What it does not do: capture packets (agent/nflog), decide which
// packets are captured (agent/rules), classify them (classifier/), or
// persist records across an agent restart: what is queued in memory when
// the agent is killed is lost, and Run's shutdown drain is bounded.
package ship
