//go:build !linux

package flow

import "unsafe"

const hugePageSize = 2 << 20

func adviseHuge(p unsafe.Pointer, n uintptr) {}
