// Command gpushare-conformance is the Go client's scenario CLI for the conformance suite: the
// contract is tests/conformance/README.md (scenarios, exit status 0/1/77, FAIL:/SKIP: lines,
// descriptor counting, the redeem-child mode).
//
//	gpushare-conformance <scenario>
//	gpushare-conformance redeem-child <ticket-hex> <resource-id> <size>
package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"example.invalid/gpushare/clients/go/gpushare"
)

// scenarios maps each scenario name of the contract to its function.
var scenarios = map[string]func(*env) error{
	"connect":       scenarioConnect,
	"session":       scenarioSession,
	"resources":     scenarioResources,
	"export-redeem": scenarioExportRedeem,
	"host-sync":     scenarioHostSync,
	"fd-wait":       scenarioFdWait,
	"ops":           scenarioOps,
	"tickets":       scenarioTickets,
	"foreign":       scenarioForeign,
	"extra-fds":     scenarioExtraFds,
	"stream":        scenarioStream,
	"fast-path":     scenarioFastPath,
}

// env is what a scenario runs with: the daemon's runtime directory and a context bounding the
// whole scenario.
type env struct {
	ctx        context.Context
	runtimeDir string
}

// failure and skip end a scenario with exit status 1 and 77.
type failure struct{ msg string }

func (f *failure) Error() string { return f.msg }

type skip struct{ reason string }

func (s *skip) Error() string { return s.reason }

func failf(format string, args ...interface{}) error {
	return &failure{msg: fmt.Sprintf(format, args...)}
}

// scenarioTimeout bounds a scenario, so that a hung daemon fails it with a FAIL line before the
// harness's own limit of 60 s kills the process.
const scenarioTimeout = 45 * time.Second

func usage() {
	names := make([]string, 0, len(scenarios))
	for name := range scenarios {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: %s <scenario>\n       %s redeem-child <ticket-hex> <resource-id> <size>\nscenarios: %s\n",
		os.Args[0], os.Args[0], strings.Join(names, ", "))
}

func main() {
	if len(os.Args) < 2 {
		os.Exit(badUsage("no scenario named"))
	}
	name := os.Args[1]
	var run func(*env) error
	if name == "redeem-child" {
		if len(os.Args) != 5 {
			os.Exit(badUsage("redeem-child takes 3 arguments"))
		}
		run = func(e *env) error { return redeemChild(e, os.Args[2], os.Args[3], os.Args[4]) }
	} else if run = scenarios[name]; run == nil {
		os.Exit(badUsage(fmt.Sprintf("unknown scenario %q", name)))
	} else if len(os.Args) != 2 {
		os.Exit(badUsage(fmt.Sprintf("%s takes no arguments", name)))
	}
	os.Exit(runScenario(name, run))
}

// badUsage prints the usage and a FAIL line: a scenario the harness asks for and this CLI does
// not know fails (exit 1), it is not skipped.
func badUsage(what string) int {
	usage()
	fmt.Fprintf(os.Stderr, "FAIL: a scenario name (and for redeem-child its arguments), got %s\n", what)
	return 1
}

// runScenario runs one scenario between two descriptor counts and returns the exit status.
func runScenario(name string, run func(*env) error) (status int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "%s panicked: %v\n%s", name, r, debug.Stack())
			fmt.Fprintf(os.Stderr, "FAIL: %s panicked: %v\n", name, r)
			status = 1
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	e := &env{ctx: ctx, runtimeDir: gpushare.RuntimeDir()}
	if err := warmUp(e, name != "redeem-child"); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	baseline, err := countFds()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: counting /proc/self/fd: %v\n", err)
		return 1
	}
	err = run(e)
	switch err := err.(type) {
	case nil:
	case *skip:
		fmt.Fprintf(os.Stderr, "SKIP: %s\n", err.reason)
		return 77
	default:
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	if leaked, list := leakedFds(baseline); leaked > 0 {
		fmt.Fprintf(os.Stderr, "descriptors open beyond the baseline of %d:\n%s", baseline, list)
		fmt.Fprintf(os.Stderr, "FAIL: leaked %d fds\n", leaked)
		return 1
	}
	fmt.Fprintf(os.Stderr, "%s: pass\n", name)
	return 0
}
