package l4

// PortStats are one port's counters, summed over its RX workers.
type PortStats struct {
	Owner
	Name      string
	RxQueues  int
	RxPackets uint64
	RxBytes   uint64
	RxErrors  uint64
	// RxQueuePackets are the frames received per queue (RX worker), so
	// that the spread of flows over the workers shows.
	RxQueuePackets []uint64
	TxPackets      uint64
	TxBytes        uint64
	TxErrors       uint64 // frames the backend did not take
	// Drops counts the frames received on this port that were not
	// delivered, by reason (DropNone is always 0).
	Drops [NumDropReasons]uint64
}

// RingInfo names a ring and carries its counters.
type RingInfo struct {
	From      PortID
	FromName  string
	FromQueue int
	To        PortID
	ToName    string
	RingStats
}

// PipelineStats is a snapshot of a pipeline's counters, for metrics.
type PipelineStats struct {
	Ports []PortStats
	Rings []RingInfo
	Pool  BufPoolStats
	// FragExpired counts held fragments whose first fragment never came.
	FragExpired uint64
	// FragEvicted counts held fragments evicted to keep the fragment
	// store within its limits; FragHeldBytes is what it holds now.
	FragEvicted   uint64
	FragHeldBytes int64
	// Queued is the number of frames queued to non-NIC ports now
	// (bounded by PipelineConfig.QueuedLimit).
	Queued int64
	// Drops are the drops of every port by reason, those of ports that
	// were removed included: a monotonic total for usnetd_drops_total.
	Drops [NumDropReasons]uint64
}

// Stats reads every counter. It is safe to call at any time from any
// goroutine and never slows the data path: the counters are atomics that
// their owners write once per batch.
func (p *Pipeline) Stats() PipelineStats {
	t := p.topo.Load()
	s := PipelineStats{
		Pool:          p.pool.Stats(),
		FragExpired:   p.fragDrops.Load(),
		FragEvicted:   p.sw.frags.evicted.Load(),
		FragHeldBytes: p.sw.frags.heldB.Load(),
		Queued:        p.queued.Load(),
	}
	for r := range s.Drops {
		s.Drops[r] = p.retiredDrops[r].Load()
	}
	s.Drops[DropFragNoFirst] += s.FragExpired
	s.Drops[DropFragEvicted] += s.FragEvicted
	for _, ps := range t.list {
		st := PortStats{
			Owner:     ps.owner,
			Name:      ps.name,
			RxQueues:  len(ps.rx),
			TxPackets: ps.tx.packets.Load(),
			TxBytes:   ps.tx.bytes.Load(),
			TxErrors:  ps.tx.errors.Load(),
		}
		for _, w := range ps.rx {
			st.RxQueuePackets = append(st.RxQueuePackets, w.rx.packets.Load())
			st.RxPackets += w.rx.packets.Load()
			st.RxBytes += w.rx.bytes.Load()
			st.RxErrors += w.rx.errors.Load()
			for r := range w.drops {
				st.Drops[r] += w.drops[r].Load()
			}
		}
		for r, n := range st.Drops {
			s.Drops[r] += n
		}
		s.Ports = append(s.Ports, st)
		for _, in := range *ps.inbox.Load() {
			s.Rings = append(s.Rings, RingInfo{
				From: in.from.ps.owner.Port, FromName: in.from.ps.name, FromQueue: in.from.queue,
				To: ps.owner.Port, ToName: ps.name, RingStats: in.r.Stats(),
			})
		}
	}
	return s
}
