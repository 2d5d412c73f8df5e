// Package config reads the configuration of usnetd: environment variables,
// with a dotenv-style CONFFILE as fallback (a variable set in the
// environment wins over the file).
//
// One table (vars.go) lists every variable with its default, what it
// accepts and what it means. The same table drives the validation in Load,
// the `usnetd -h` text (Usage) and the table in README.md (MarkdownTable, a
// test keeps the README in step).
//
// What this package must never do: let the daemon start with a
// configuration it understood only half. Every value is checked in full
// (lists item by item, cross-checks such as DEBUG_PORTS against INTERFACES
// included) before Load returns; the first bad value ends Load with one
// *Error that names the variable, the value and what is allowed. A typo of a
// known variable in the CONFFILE is an error too, not a silent default.
// Load never panics, whatever the input, and it opens nothing but the
// CONFFILE: claiming NICs, sockets and files is the daemon's job.
package config
