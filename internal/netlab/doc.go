// Package netlab builds throwaway network-namespace labs for tests and for
// usnetd-lab: namespaces, veth pairs, addresses inside 198.18.0.0/15, and
// commands run inside a namespace. Everything it creates is removed when the
// lab is closed, also when a test fails. It never touches anything it did
// not create.
package netlab
