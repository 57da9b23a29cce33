//go:build amd64 || arm64

package flow

// prefetch asks the CPU to bring the cache lines at the n addresses in
// addrs into its caches, without waiting for them (PREFETCHT0, PRFM). Go
// has no prefetch of its own, and a plain load that misses holds up the
// instructions behind it: a table of hundreds of thousands of connections
// is bound by how many misses are in flight at once. A prefetch is a hint:
// a stale or wild address costs nothing but the hint.
//
//go:noescape
func prefetch(addrs *uintptr, n int)
