package flow

import (
	"syscall"
	"unsafe"
)

// hugePageSize is the size of a transparent huge page on the platforms
// connscope runs on (x86-64 and arm64 with 4 KiB base pages).
const hugePageSize = 2 << 20

// adviseHuge asks the kernel to back the whole 2 MiB pages inside the n
// bytes at p with transparent huge pages (madvise MADV_HUGEPAGE), before
// they are first touched. A large table is a random-access structure of
// tens of megabytes: with 4 KiB pages nearly every packet's lookup misses
// the TLB and first touches fault page by page. Where THP is off or the
// call fails, nothing changes.
func adviseHuge(p unsafe.Pointer, n uintptr) {
	start := (uintptr(p) + hugePageSize - 1) &^ (hugePageSize - 1)
	end := (uintptr(p) + n) &^ (hugePageSize - 1)
	if end <= start {
		return
	}
	syscall.Syscall(syscall.SYS_MADVISE, start, end-start, syscall.MADV_HUGEPAGE)
}

// reserve maps n bytes of anonymous memory without reserving swap for it
// (MAP_NORESERVE): address space only, until pages are written. Where the
// kernel refuses (a strict overcommit policy, an address-space limit), the
// memory comes from the Go heap instead. free gives it back.
func reserve(n uintptr) (mem []byte, free func()) {
	mem, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		return make([]byte, n), func() {}
	}
	return mem, func() { _ = syscall.Munmap(mem) }
}
