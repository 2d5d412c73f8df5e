package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "usnetd-lab: not built yet: it needs the control socket, which this version of usnetd does not have")
	os.Exit(1)
}
