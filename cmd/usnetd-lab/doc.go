// Command usnetd-lab builds a throwaway network-namespace lab, runs usnetd
// on it with a userspace service and a kernel service on the same IP,
// drives traffic and prints a summary. It must never touch anything outside
// the namespaces it made, and it removes them on exit.
package main
