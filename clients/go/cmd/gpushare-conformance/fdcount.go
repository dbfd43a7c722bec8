package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
)

// countFds counts the entries of /proc/self/fd. The directory's own descriptor, open while it
// is read, is in every count alike.
func countFds() (int, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	return len(entries), nil
}

// leakTolerance is how long the final count may take to come back to the baseline: grpc-go
// closes a channel's socket from its transport goroutines, a few milliseconds after Close
// returns. A leaked descriptor stays, so waiting hides none.
const leakTolerance = time.Second

// leakedFds is how many descriptors are open beyond the baseline once the count has settled,
// and a listing of what they point at (for the log).
func leakedFds(baseline int) (int, string) {
	deadline := time.Now().Add(leakTolerance)
	for {
		n, err := countFds()
		if err != nil {
			return 1, fmt.Sprintf("  counting /proc/self/fd: %v\n", err)
		}
		if n <= baseline {
			return 0, ""
		}
		if time.Now().After(deadline) {
			return n - baseline, listFds()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func listFds() string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, entry := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + entry.Name())
		fmt.Fprintf(&b, "  fd %s -> %s\n", entry.Name(), target)
	}
	return b.String()
}

// warmUp initialises what the Go and gRPC runtimes keep open for the life of the process
// before the baseline is counted: the runtime's poller (an epoll descriptor and its wake-up
// pipe, made by the first pollable descriptor) and, with grpc, one channel opened, used and
// closed (the contract's "one channel opened and closed").
func warmUp(e *env, grpc bool) error {
	r, w, err := os.Pipe() // pollable: starts the runtime's poller
	if err != nil {
		return fmt.Errorf("warm-up: %v", err)
	}
	r.Close()
	w.Close()
	if !grpc {
		return nil
	}
	c, err := gpushare.Dial(e.runtimeDir)
	if err != nil {
		return fmt.Errorf("warm-up: dial control.sock: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	if _, err := c.API().GetInfo(ctx, &pb.GetInfoRequest{}); err != nil {
		return fmt.Errorf("warm-up: GetInfo on %s: %v", gpushare.ControlSocket(e.runtimeDir), err)
	}
	return nil
}
