// Command usnetctl is the operator CLI of usnetd: status, rules, endpoints
// and used ports, as human tables or --json. It only talks to the control
// socket; it never touches a NIC or the eBPF maps.
package main
