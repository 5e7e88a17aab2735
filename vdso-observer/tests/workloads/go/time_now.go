// Workload for the integration tests: waits for one byte on stdin (so the
// observer can attach), then calls time.Now() N times. Go reads both clocks
// from its runtime (runtime.walltime, runtime.nanotime1) straight through the
// vDSO, with no libc.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	n, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage: time_now N")
		os.Exit(2)
	}
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
	var last time.Time
	for i := 0; i < n; i++ {
		last = time.Now()
	}
	fmt.Println(last.Unix() > 0)
}
