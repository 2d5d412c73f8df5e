// Package client is the Go client of usnetd's control protocol: Dial,
// RequestUDS, AddMatch, RemoveMatch, QueryUsedPorts and Close. It never
// leaves its bound socket file behind.
package client
