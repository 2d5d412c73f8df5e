// Package sdnotify speaks the service manager notification protocol of
// systemd (sd_notify(3)) without libsystemd or cgo: one datagram of
// newline-separated KEY=VALUE assignments to the AF_UNIX datagram socket
// named by $NOTIFY_SOCKET, a path or, with a leading '@', an abstract name.
//
// usnetd runs as a Type=notify service (deploy/usnetd.service). It sends
// READY=1 once every NIC is claimed and the control socket is bound, so
// that units ordered after usnetd start only when it really switches;
// STOPPING=1 when it begins to give the NICs back; STATUS= lines that
// `systemctl status` shows; and, when the unit sets WatchdogSec=,
// WATCHDOG=1 keep-alives from Watchdog, which sends them only while the
// caller's health check passes, so that systemd restarts a usnetd whose
// pipeline has stalled rather than one whose process merely exists.
//
// Without $NOTIFY_SOCKET (not started by systemd, or by a unit that is not
// Type=notify) every function sends nothing and reports so; that is not an
// error. The package never unsets the variables it reads, never logs, and
// keeps no socket open between calls: each notification is one socket,
// one sendto and a close, as sd_notify does it.
package sdnotify
