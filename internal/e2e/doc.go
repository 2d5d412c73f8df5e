// Package e2e is the end-to-end harness: a two-namespace lab whose "host"
// NIC (a veth end named after the lab) the real usnetd claims, starting
// and stopping usnetd there, reading its log, its sd_notify messages and
// its metrics, and checking that it left the NIC as it found it.
//
// The daemon it starts is, by default, the calling test binary itself,
// re-executed with MainEnv=1: the test package's TestMain must then run
// usnetd's main (cmd/usnetd does). Lab.Bin names another binary instead,
// such as ProductBinary's.
//
// cmd/usnetd's end-to-end tests use it, and cmd/usnetd-lab uses its
// metrics reader (ScrapeIn, ParseMetrics). Timeouts here only tell an
// answer from none or detect a hang; they assert no speed.
package e2e
