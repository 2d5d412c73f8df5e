// Command usnetd is the daemon: `usnetd [CONFFILE]`. It reads its
// configuration from the environment with a dotenv-style CONFFILE as
// fallback (the environment wins), claims the NICs, runs the pipeline, the
// control socket and the metrics server. `usnetd -h` prints every variable.
//
// It must never start with a configuration it half understood: a bad value
// stops it with one line naming the variable, the value and what is
// allowed, exit status 2.
package main
