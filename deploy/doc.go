// Package deploy holds what operators install around usnetd, and the tests
// that keep it true; it has no Go code of its own:
//
//	usnetd.service                    systemd unit (Type=notify, watchdog, capabilities, sandbox)
//	usnetd.service.d/cpuaffinity.conf example drop-in: CPUAffinity= with the matching CPUS=
//	usnetd.conf                       example configuration, every variable explained
//	prometheus.yml, usnetd-rules.yml  scrape configuration and alerts (usnetd-rules.test.yml: their unit tests)
//	grafana-dashboard.json            Grafana dashboard of the metrics in package metrics
//	capabilities.md                   why the unit grants each capability
//	usnet-hello.service               example unit of a usnet program (cmd/usnet-hello) next to usnetd
//	(README.md, "Operating usnetd": install, configure, run, observe and tune usnetd)
//
// The tests run the real checkers where they exist (systemd-analyze
// verify, promtool check and test), load the example configuration with
// internal/config, and match every metric name and label that the rules
// and the dashboard use against a scrape of a real pipeline. A checker
// that is missing skips its test, except under CI=true, where it fails.
//
// TestSystemdUnit runs the unit under a real systemd: systemd as PID 1 in
// a container made by systemd-nspawn (Debian's systemd-container) over the
// host's /usr, in the network namespace of a lab, with a bpffs of its own
// bound at /sys/fs/bpf (the unit cannot mount one), usnetd installed by
// `task install` (go-task), and the test binary itself as the clients. It
// checks READY=1, CPUAffinity=, clients in /tmp and /run/user/UID, the
// example usnet program under usnet-hello.service (it serves a peer as a
// dynamic user in ALLOW_GID and lives through usnetd's restart), the
// watchdog with the kernel filtered throughout, and a clean stop; it is
// bounded by a context and removes the container, the mount and the lab
// also when it fails.
package deploy
