// Command symvirt-sim runs the simulations: synthetic traces replayed
// against the placement planners, and the boot of many VMs from one
// image; no hosts or VMs involved.
//
//	symvirt-sim consolidate [--hosts 100 --vms 1000 --hours 24 --step 5m --seed 1 --output table|json]
//	symvirt-sim boot [--calibration build/bootsim-calibration.json --hosts 100 --vms 1000 --degree 2 ...]
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// commands are the subcommands, each parsing its own flags.
var commands = map[string]struct {
	run   func(args []string, out io.Writer) error
	brief string
}{
	"consolidate": {runConsolidate, "the planner (with hysteresis) against first-fit decreasing from scratch, over a day of diurnal load"},
	"boot":        {runBoot, "time to boot N VMs on H hosts: fan-out tree of caches against whole-image copies and one central NBD server"},
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]].run == nil {
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := commands[os.Args[1]].run(os.Args[2:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "symvirt-sim:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: symvirt-sim <command> [flags]  (symvirt-sim <command> -h for its flags)")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].brief)
	}
}
