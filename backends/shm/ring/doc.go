// Package ring is the layout of usnetd's shared-memory packet channel and
// the code that moves frames through it: one memfd holding a header, two
// single-producer single-consumer rings of fixed frame slots, and a
// SOCK_SEQPACKET socket pair for wake-ups. Both usnetd (backends/shm) and
// the endpoint (control/client, usnet) use it; it imports only the
// standard library and golang.org/x/sys/unix.
//
// # Layout, version 1
//
// All numbers are little-endian (the layout is for one machine; usnetd and
// the endpoint share its byte order, and only little-endian Linux is
// supported). Offsets in bytes from the start of the memfd:
//
//	offset size  field                      written by
//	0      4     magic 0x4d485355 ("USHM")  usnetd, once
//	4      4     version (1)                usnetd, once
//	8      4     data offset (4096)         usnetd, once
//	12     4     slots per ring N (power of two, 2..32768)
//	16     4     slot size S (multiple of 64)
//	20     4     frame capacity C (S >= C+8)
//	24     4     MTU the channel carries (usnetd's NIC MTU)
//	28     4     reserved, 0
//	32     8     total size of the memfd (data offset + 2*N*S, page-aligned)
//	40     4     endpoint closed: the endpoint writes 1 when it detaches
//	44     20    reserved, 0
//	64     4     ring 0 (to the endpoint): producer index    usnetd
//	128    4     ring 0: consumer index                      endpoint
//	192    4     ring 0: need-wakeup flag                    endpoint sets, usnetd clears
//	256    64    reserved, 0
//	320    4     ring 1 (from the endpoint): producer index  endpoint
//	384    4     ring 1: consumer index                      usnetd
//	448    4     ring 1: need-wakeup flag                    usnetd sets, endpoint clears
//	512    3584  reserved, 0 (up to the data offset)
//	4096   N*S   ring 0's slots
//	4096+N*S N*S ring 1's slots
//
// Every index, and the flags, sit on a 64-byte cache line of their own, so
// that the two sides never write to one line. Slot i of a ring (i = index
// mod N) starts at the ring's slot base + i*S and holds:
//
//	0      4     frame length L (1..C)
//	4      4     reserved, 0
//	8      C     the frame's bytes, L of them
//
// # Protocol
//
// Indices are free-running uint32 counters (they wrap). The producer
// writes frames into the slots at producer..producer+k-1, their lengths,
// and then stores producer+k (an atomic store: the release that publishes
// the slots). The consumer loads the producer index once (atomically),
// copies the frames at consumer..producer-1 out of their slots and stores
// the new consumer index, which hands the slots back. A ring is full when
// producer-consumer == N.
//
// Wake-ups follow AF_XDP's need-wakeup: a consumer that found its ring
// empty sets the ring's need-wakeup flag, looks at the ring once more,
// and only then sleeps in poll(2) on its end of the wake-up socket pair. A
// producer that published frames swaps the flag from 1 to 0 (compare and
// swap) and, only if it did, sends one byte on its end of the pair. A side
// that is busy thus never makes a system call for the other one. The
// wake-up socket also tells usnetd that the endpoint closed its end
// (POLLHUP), and it cannot be made to block: unlike an eventfd, each side
// has its own file description, so the endpoint cannot clear usnetd's
// O_NONBLOCK, fill the counter or steal its wake-ups.
//
// # usnetd does not trust the memory
//
// The endpoint can write anything into the shared pages at any moment.
// usnetd (the Consumer of ring 1, the Producer of ring 0) therefore keeps
// its own copy of the indices it owns and never reads them back; reads the
// other side's index exactly once per batch, atomically, and accepts it
// only when 0 <= producer-consumer <= N (otherwise the ring counts as
// empty, or full, and the event is counted); reads each slot's length
// exactly once and drops a frame whose length is 0 or above C (counted);
// and copies every frame out of shared memory before anyone parses it, so
// there is no window between a check and a use. The memfd is sealed
// against shrinking and growing (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL),
// so no endpoint can make usnetd's mapping fault. A malicious endpoint can
// thus spoil its own traffic and nothing else. FuzzConsumer scribbles on a
// ring while a Consumer reads it.
package ring
