// Command usnetctl is the operator CLI of usnetd: "usnetctl status" (the
// claimed interfaces and the attached endpoints with their counters),
// "usnetctl ports" (the local ports in use) and "usnetctl rules" (every
// rule of the switch and its owner), as human tables or, with --json, as
// one JSON document for scripts. It honours SOCKET_PATH as usnetd does.
//
// It only talks to the control socket, from an abstract client address
// (no file left behind); it never touches a NIC or the eBPF maps, and it
// never changes anything: it sends queries only.
package main
