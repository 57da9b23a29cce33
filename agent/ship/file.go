package ship

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/connscope/connscope/classifier/capture"
	"github.com/connscope/connscope/packet"
)

// fileSink writes a pcapng file: one interface of link type raw IP (101)
// with nanosecond timestamps per section, one Enhanced Packet Block per
// record holding the header-only packet capture.AppendPacket builds, its
// original length being the headers plus the record's payload length.
// Each Send builds the batch's blocks in one buffer and writes it with
// one write(2) (a buffer of writeChunk bytes at most: a larger batch takes
// a few), so what Send acknowledged is in the file (the operating system's
// page cache; there is no fsync), and a reader of the file sees whole
// batches. Building the blocks in place, without a buffered writer, keeps
// the copies per record to one into the buffer and one into the page
// cache: at a flood this sink is a large part of the agent's CPU time.
//
// A file that exists is never truncated: when it is a pcapng file this
// sink wrote (it starts with the same section and interface header, and
// ends with a whole block), a new section (Section Header Block and
// Interface Description Block) is appended and the records follow it, so
// a restarted agent adds to the earlier capture; pcapng readers (ours,
// tshark) read the sections one after the other. Any other file is
// refused, unchanged.
//
// A write error (disk full) is final: the sink keeps it, and every later
// Send returns it.
//
// The write is a raw system call while writes are quick (see write).
type fileSink struct {
	path string

	mu  sync.Mutex
	f   *os.File
	err error // the first write error, final
	buf []byte
	// slowUntil: until then, writes go through the Go scheduler
	// (os.File.Write), as a raw write slept (see write).
	slowUntil time.Time
}

// slowPeriod is how long the sink writes through the scheduler after a
// raw write slept.
const slowPeriod = 10 * time.Second

// writeChunk is the size at which Send writes what it has built before
// going on with the batch: the default batch of 1024 records is about
// 80 KiB, the largest (MaxBatchSize) about 1.3 MiB.
const writeChunk = 256 << 10

// pcapngHeader is what NewPcapngWriter writes first: the section header
// and the interface description of a file sink.
var pcapngHeader = func() []byte {
	var b bytes.Buffer
	if _, err := capture.NewPcapngWriter(&b, capture.LinkTypeRaw, 0); err != nil {
		panic(err)
	}
	return b.Bytes()
}()

func openFile(path string, log *slog.Logger) (*fileSink, error) {
	// 0640: the records name who talked to whom. O_APPEND: what is in the
	// file stays.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	cut, err := checkAppendable(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("file sink %s: %w; the file was left as it is: move it away or give another path", path, err)
	}
	if cut > 0 {
		log.Warn("file sink: the capture's last block was cut short (the agent was killed, or the disk filled, while it was written): removed it, the rest of the capture stays",
			"path", path, "bytesRemoved", cut)
	}
	if _, err := f.Write(pcapngHeader); err != nil {
		f.Close()
		return nil, fmt.Errorf("file sink %s: %w", path, err)
	}
	return &fileSink{path: path, f: f}, nil
}

// checkAppendable accepts an empty file, or a pcapng file that starts as
// a file sink's does, so that a section appended to it is read after the
// earlier ones. When the file's last block is cut short (its trailing
// length does not point back at a block header of the same length: the
// agent was killed, or the disk filled, in the middle of a write), the
// file is cut after its last whole block, and how many bytes went is
// returned: a block that was not whole was never acknowledged to the
// queue (Send returns after the flush), and refusing the file instead
// would keep a restarted agent from starting at all.
func checkAppendable(f *os.File) (cut int64, err error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if size == 0 {
		return 0, nil
	}
	notOurs := fmt.Errorf("it exists (%d bytes) and is not a pcapng capture written by a connscope file sink", size)
	if size < int64(len(pcapngHeader)) {
		return 0, notOurs
	}
	head := make([]byte, len(pcapngHeader))
	if _, err := f.ReadAt(head, 0); err != nil {
		return 0, err
	}
	if !bytes.Equal(head, pcapngHeader) {
		return 0, notOurs
	}
	var tail [4]byte
	if _, err := f.ReadAt(tail[:], size-4); err != nil {
		return 0, err
	}
	blen := int64(binary.LittleEndian.Uint32(tail[:]))
	var hdr [8]byte
	if blen >= 12 && blen%4 == 0 && blen <= size {
		if _, err := f.ReadAt(hdr[:], size-blen); err != nil {
			return 0, err
		}
		if int64(binary.LittleEndian.Uint32(hdr[4:8])) == blen {
			return 0, nil
		}
	}
	whole, err := wholeBlocks(f, size)
	if err != nil {
		return 0, err
	}
	if whole < int64(len(pcapngHeader)) {
		return 0, notOurs
	}
	if err := f.Truncate(whole); err != nil {
		return 0, fmt.Errorf("cut the capture's last block, which is not whole: %w", err)
	}
	return size - whole, nil
}

// wholeBlocks returns the length of the longest prefix of the file made of
// whole pcapng blocks (little-endian, as a file sink writes them): each a
// length, at least 12 and a multiple of 4, that the block repeats at its
// end. It reads the file once, sequentially.
func wholeBlocks(f *os.File, size int64) (int64, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 1<<20)
	var off int64
	var hdr [8]byte
	var trail [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return off, nil // the end, or a header cut short
		}
		blen := int64(binary.LittleEndian.Uint32(hdr[4:8]))
		if blen < 12 || blen%4 != 0 || off+blen > size {
			return off, nil
		}
		if _, err := r.Discard(int(blen - 12)); err != nil {
			return off, err
		}
		if _, err := io.ReadFull(r, trail[:]); err != nil || int64(binary.LittleEndian.Uint32(trail[:])) != blen {
			return off, nil
		}
		off += blen
	}
}

// Send appends the batch to the file. A record the format cannot hold (a
// timestamp before 1970) rejects the whole batch before anything is
// written.
func (s *fileSink) Send(_ context.Context, batch []packet.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return fmt.Errorf("file sink %s: %w", s.path, errSinkClosed)
	}
	if s.err != nil {
		return s.err
	}
	for i := range batch {
		if batch[i].Timestamp < 0 {
			return fmt.Errorf("file sink %s: %w: record %d has timestamp %d, before 1970", s.path, ErrRejected, i, batch[i].Timestamp)
		}
	}
	s.buf = s.buf[:0]
	for i := range batch {
		s.buf, _ = capture.AppendRecordBlock(s.buf, &batch[i]) // timestamps checked above
		if len(s.buf) >= writeChunk {
			if err := s.write(); err != nil {
				return err
			}
		}
	}
	return s.write()
}

// write writes the blocks built in s.buf and empties it; a failure is
// kept as final.
//
// It makes a raw write(2), which the Go scheduler does not see, unless a
// raw write slept in the last slowPeriod. A write the scheduler sees
// (os.File.Write) that outlasts a sysmon tick (20 µs, which copying a batch
// into the page cache does) has its P handed to another thread, so that
// other goroutines run meanwhile, and wakes sysmon: with the agent's one P
// (GOMAXPROCS 1, on one CPU) that is the NFLOG reader's thread and this one
// taking turns on the core, which cost 10 to 12 % of the agent's CPU at a
// SYN flood (under a 2 % CPU limit and with a whole core). But a raw write
// that sleeps holds its P: with one P, the NFLOG reader waits for it and
// the socket's receive buffer holds what comes meanwhile. A write into the
// page cache sleeps when it waits for the disk (the page cache over its
// dirty limit, the journal), and the next ones may too; so when a raw
// write slept (the thread's voluntary context switches, which preemption
// and a CPU limit's throttling do not count), writes go through the
// scheduler for slowPeriod, and the reader runs while they wait.
func (s *fileSink) write() error {
	if len(s.buf) == 0 {
		return nil
	}
	var err error
	if time.Now().Before(s.slowUntil) {
		_, err = s.f.Write(s.buf)
	} else {
		var slept bool
		rc, cerr := s.f.SyscallConn()
		if cerr == nil {
			cerr = rc.Write(func(fd uintptr) bool {
				slept, err = rawWrite(fd, s.buf)
				return true
			})
		}
		if cerr != nil && err == nil {
			err = cerr
		}
		if slept {
			s.slowUntil = time.Now().Add(slowPeriod)
		}
	}
	s.buf = s.buf[:0]
	if err != nil {
		s.err = fmt.Errorf("file sink %s: %w", s.path, err)
		return s.err
	}
	return nil
}

// rawWrite writes all of b to fd with raw write(2) calls (not seen by the
// Go scheduler), again after a short write or EINTR as os.File.Write does,
// and reports whether the thread slept meanwhile (a voluntary context
// switch, from getrusage).
func rawWrite(fd uintptr, b []byte) (slept bool, err error) {
	// The two readings must be of the same thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := voluntarySwitches()
	for len(b) > 0 {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			err = fmt.Errorf("write: %w", errno)
			break
		}
		if n == 0 {
			err = io.ErrShortWrite
			break
		}
		b = b[n:]
	}
	after := voluntarySwitches()
	return before < 0 || after != before, err
}

// voluntarySwitches returns the calling thread's voluntary context
// switches (getrusage RUSAGE_THREAD, a raw system call), or -1 if it cannot
// tell (never, with these arguments).
func voluntarySwitches() int64 {
	var ru unix.Rusage
	if _, _, errno := unix.RawSyscall(unix.SYS_GETRUSAGE, unix.RUSAGE_THREAD, uintptr(unsafe.Pointer(&ru)), 0); errno != 0 {
		return -1
	}
	return ru.Nvcsw
}

// Close closes the file.
func (s *fileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	if err != nil {
		return fmt.Errorf("file sink %s: %w", s.path, err)
	}
	return nil
}
