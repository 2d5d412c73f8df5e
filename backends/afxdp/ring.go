package afxdp

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The four rings of an XSK, shared with the kernel through mmap.
//
// Each ring is single-producer single-consumer: the kernel is one side, one
// goroutine of ours the other (see the ownership table in afxdp.go). The
// producer and consumer indices are free-running uint32 words in the
// mmapped page; a slot is index&mask. The kernel reads and writes them with
// smp_load_acquire/smp_store_release, so our side must use atomic loads and
// stores too: sync/atomic on a *uint32 that points into the mapping. This
// file is the only place that makes those pointers (unsafe.Pointer into an
// mmapped []byte); everything else goes through the methods below.
//
// The race detector does not see the kernel's writes (nor our accesses to
// memory outside the Go heap), so it cannot check this protocol; the atomics
// are what makes it correct, not what makes -race quiet.
//
// Each ring side caches the other side's index and only reloads it when the
// cached value says the ring is full (producer) or empty (consumer), as
// libxdp does: one atomic load per batch instead of one per descriptor.

// ring is the index part common to all four rings.
type ring struct {
	producer *uint32 // in the mapping
	consumer *uint32 // in the mapping
	flags    *uint32 // in the mapping; XDP_RING_NEED_WAKEUP
	size     uint32  // number of slots, a power of two
	mask     uint32  // size-1
	// Our own index (producer rings: producer; consumer rings: consumer)
	// and the cached other one (producer rings: consumer+size, the first
	// index we may not write; consumer rings: producer).
	local, cached uint32
	mem           []byte // the whole mapping, for munmap
}

// umemRing is a fill or completion ring: its slots are UMEM addresses.
type umemRing struct {
	ring
	addrs []uint64
}

// descRing is an RX or TX ring: its slots are descriptors.
type descRing struct {
	ring
	descs []unix.XDPDesc
}

// init points r's indices into mem at the kernel's offsets. It reports
// false if an offset lies outside the mapping or is misaligned (a kernel
// that lays rings out in a way we do not understand).
func (r *ring) init(mem []byte, off unix.XDPRingOffset, size uint32) bool {
	for _, o := range []uint64{off.Producer, off.Consumer, off.Flags} {
		if o%4 != 0 || o+4 > uint64(len(mem)) {
			return false
		}
	}
	r.mem = mem
	r.producer = (*uint32)(unsafe.Pointer(&mem[off.Producer]))
	r.consumer = (*uint32)(unsafe.Pointer(&mem[off.Consumer]))
	r.flags = (*uint32)(unsafe.Pointer(&mem[off.Flags]))
	r.size = size
	r.mask = size - 1
	return true
}

// initUmem sets up a fill or completion ring in mem.
func (r *umemRing) init(mem []byte, off unix.XDPRingOffset, size uint32, producer bool) bool {
	if off.Desc%8 != 0 || off.Desc+uint64(size)*8 > uint64(len(mem)) || !r.ring.init(mem, off, size) {
		return false
	}
	r.addrs = unsafe.Slice((*uint64)(unsafe.Pointer(&mem[off.Desc])), size)
	r.start(producer)
	return true
}

// initDesc sets up an RX or TX ring in mem.
func (r *descRing) init(mem []byte, off unix.XDPRingOffset, size uint32, producer bool) bool {
	const sz = uint64(unsafe.Sizeof(unix.XDPDesc{}))
	if off.Desc%8 != 0 || off.Desc+uint64(size)*sz > uint64(len(mem)) || !r.ring.init(mem, off, size) {
		return false
	}
	r.descs = unsafe.Slice((*unix.XDPDesc)(unsafe.Pointer(&mem[off.Desc])), size)
	r.start(producer)
	return true
}

func (r *ring) start(producer bool) {
	if producer {
		r.local = atomic.LoadUint32(r.producer)
		r.cached = atomic.LoadUint32(r.consumer) + r.size
	} else {
		r.local = atomic.LoadUint32(r.consumer)
		r.cached = atomic.LoadUint32(r.producer)
	}
}

// free returns how many slots a producer may fill now, at most want; it
// reloads the kernel's consumer index only if the cached one shows fewer
// than want free slots.
func (r *ring) free(want uint32) uint32 {
	n := r.cached - r.local
	if n < want {
		r.cached = atomic.LoadUint32(r.consumer) + r.size
		n = r.cached - r.local
	}
	return min(n, want)
}

// submit publishes n slots written after local (producer side).
func (r *ring) submit(n uint32) {
	if n == 0 {
		return
	}
	r.local += n
	atomic.StoreUint32(r.producer, r.local)
}

// avail returns how many slots a consumer may read now, at most want; it
// reloads the kernel's producer index only when the cached one shows none.
func (r *ring) avail(want uint32) uint32 {
	n := r.cached - r.local
	if n == 0 {
		r.cached = atomic.LoadUint32(r.producer)
		n = r.cached - r.local
	}
	return min(n, want)
}

// reload reads the kernel's producer index afresh and returns how many
// slots a consumer may read now (consumer side).
func (r *ring) reload() uint32 {
	r.cached = atomic.LoadUint32(r.producer)
	return r.cached - r.local
}

// release gives n read slots back to the kernel (consumer side).
func (r *ring) release(n uint32) {
	if n == 0 {
		return
	}
	r.local += n
	atomic.StoreUint32(r.consumer, r.local)
}

// pending returns how many slots the producer has published that the
// kernel has not consumed yet (producer side; a fresh load).
func (r *ring) pending() uint32 {
	return r.local - atomic.LoadUint32(r.consumer)
}

// needWakeup reports whether the kernel asks for a syscall to go on
// (XDP_RING_NEED_WAKEUP; only meaningful with XDP_USE_NEED_WAKEUP).
func (r *ring) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// The socket options that golang.org/x/sys/unix has no helper for take
// pointers to the structs of <linux/if_xdp.h>.

func setsockoptRaw(fd, level, opt int, p unsafe.Pointer, size uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), size, 0)
	if e != 0 {
		return e
	}
	return nil
}

// getsockoptRaw reads an option into p and returns the length the kernel
// wrote.
func getsockoptRaw(fd, level, opt int, p unsafe.Pointer, size uintptr) (uintptr, error) {
	l := uint32(size)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return uintptr(l), nil
}

// umemAddr returns the user address of a UMEM mapping for XDP_UMEM_REG.
func umemAddr(mem []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&mem[0]))) }
