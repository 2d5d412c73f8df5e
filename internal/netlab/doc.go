// Package netlab builds throwaway network-namespace labs for tests and for
// usnetd-lab: namespaces, veth pairs, addresses inside 198.18.0.0/15, and
// commands run inside a namespace. Everything it creates is removed when the
// lab is closed, also when a test fails. It never touches anything it did
// not create.
//
// A test:
//
//	lab, err := netlab.New(t, "")           // skips without root; fails under CI=true
//	a, _ := lab.AddNS("a")                  // namespace "ul3fa9c1-a", lo up
//	b, _ := lab.AddNS("b")
//	lab.Veth(a, "eth0", b, "eth0", netlab.VethOpts{Queues: 2, Up: true})
//	sn := lab.Subnet()                      // 198.18.X.0/24
//	a.AddAddr("eth0", netlab.Host(sn, 1))   // 198.18.X.1/24
//	b.AddAddr("eth0", netlab.Host(sn, 2))
//	pc, _ := a.ListenPacket("udp", "198.18.X.1:7")   // a socket inside a
//	a.Do(func() error { ... })              // this thread inside a, for AF_XDP, BPF, ...
//	out, _ := b.Command(ctx, "ping", "-c1", "198.18.X.1").Output()
//	// t.Cleanup closes the lab
//
// Most tests want two namespaces, "host" and "peer", joined by a veth with
// .1 and .2 (and ::1, ::2) of a fresh subnet: NewPair builds that.
//
//	p, _ := netlab.NewPair(t, netlab.PairOpts{IPv6: true})
//	p.Peer.Dial(ctx, "tcp", netip.AddrPortFrom(p.HostIP, 80).String())
//
// What it promises:
//
//   - Nothing is created in the root network namespace: both ends of every
//     veth are created directly inside lab namespaces. The only shared names
//     are the namespaces' files under /run/netns (LAB-NAME, with LAB = a
//     prefix and 6 random hex digits) and one lock file per lab under
//     /run/netlab, so labs of tests running in parallel, in one process or
//     many, never collide, and link names inside a lab are free ("eth0").
//   - Every address and route it installs lies inside 198.18.0.0/15 or
//     2001:db8::/32 (Range4, Range6); anything else is refused with
//     ErrOutsideLab. Traffic stays between lab namespaces.
//   - SetUp, AddAddr and Veth with Up return once the kernel's asynchronous
//     work for the link is done (see ReadyTimeout), so the first packet a
//     test sends is not dropped.
//   - Close (registered with t.Cleanup) removes the namespaces, and the
//     kernel then destroys them with their links. Sweep, also run by New,
//     removes what crashed runs left, judged by whether the owning process
//     still holds the lab's lock, not by age.
//   - A thread that enters a namespace (Do) is put back, or, if that fails,
//     never reused by the Go runtime.
//
// Privileged tests of other packages call Require(t): it skips without
// CAP_NET_ADMIN and CAP_SYS_ADMIN, except under CI=true, where it fails.
package netlab
