//go:build !linux

package flow

import "unsafe"

const hugePageSize = 2 << 20

func adviseHuge(p unsafe.Pointer, n uintptr) {}

// reserve allocates n zeroed bytes from the Go heap (where the operating
// system maps fresh memory lazily, untouched pages cost little); the
// garbage collector frees them.
func reserve(n uintptr) (mem []byte, free func()) { return make([]byte, n), func() {} }
