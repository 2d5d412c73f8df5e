// Package testkit is what the tests of several packages share, so that
// each helper exists once:
//
//   - frame builders: IPv4Frame (by hand, fast, no checksums: for the
//     switch, which reads headers only) and UDP and TCP (gopacket, IPv4 or
//     IPv6 by the addresses, correct checksums: for real kernels), and
//     ParseUDP for what comes back;
//   - OpenFDs and FDList, for leak checks; WaitReadable, a poll that a
//     signal does not cut short;
//   - echo servers and clients inside netlab namespaces: ServeTCPEcho,
//     ServeUDPEcho, TCPEcho, UDPEcho, EchoConn, and IsTimeout to tell no
//     answer (a firewall's drop) from a refusal;
//   - the in-memory switch domain a control server runs over in tests
//     (NewDomain), and Serve, which runs a server until the test ends;
//   - Eventually, a bounded wait for a condition.
//
// Privilege and tool checks are netlab.Require and netlab.RequireTool;
// the two-namespace veth lab is netlab.NewPair.
//
// Only tests import it. It imports the switch (l4) and backends/memory,
// so the switch's internal tests cannot use it; nothing here imports
// control, usnet or a backend under test.
package testkit
