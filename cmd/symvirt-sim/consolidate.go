package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord/placement/sim"
)

func runConsolidate(args []string, out io.Writer) error {
	c := sim.Default()
	fs := flag.NewFlagSet("consolidate", flag.ContinueOnError)
	fs.IntVar(&c.Hosts, "hosts", c.Hosts, "hosts (32 CPUs, 128 GiB each)")
	fs.IntVar(&c.VMs, "vms", c.VMs, "VMs")
	hours := fs.Float64("hours", 24, "simulated hours")
	fs.DurationVar(&c.Step, "step", c.Step, "time between rounds")
	fs.DurationVar(&c.Window, "window", c.Window, "usage window (the maximum over it is what the planners see)")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "trace seed")
	fs.Float64Var(&c.Policy.Target, "target", c.Policy.Target, "fill a plan may bring a host up to")
	fs.Float64Var(&c.Policy.High, "high", c.Policy.High, "high-water mark: scale out above it")
	fs.Float64Var(&c.Policy.Low, "low", c.Policy.Low, "low-water mark: consolidate when the hosts in use are below it")
	output := fs.String("output", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("--output %q: want table or json", *output)
	}
	c.Duration = time.Duration(*hours * float64(time.Hour))
	var results []sim.Result
	for _, s := range []sim.Strategy{sim.Planner{Policy: c.Policy}, sim.FFD{Policy: c.Policy}} {
		start := time.Now()
		r, err := sim.Run(c, s)
		if err != nil {
			return err
		}
		results = append(results, r)
		if *output != "json" {
			fmt.Fprintf(out, "# %s ran in %v\n", s.Name(), time.Since(start).Round(time.Millisecond))
		}
	}
	if *output == "table" {
		return table(out, c, results)
	}
	e := json.NewEncoder(out)
	e.SetIndent("", "  ")
	return e.Encode(report{Config: c, Duration: c.Duration.String(), Step: c.Step.String(), Window: c.Window.String(), Results: results})
}

// report is the JSON output; the durations are repeated as text.
type report struct {
	Config   sim.Config   `json:"config"`
	Duration string       `json:"duration"`
	Step     string       `json:"step"`
	Window   string       `json:"window"`
	Results  []sim.Result `json:"results"`
}

func table(out io.Writer, c sim.Config, results []sim.Result) error {
	fmt.Fprintf(out, "%d hosts (%.0f CPUs, %d GiB), %d VMs, %v in %v rounds (usage window %v), seed %d\n",
		c.Hosts, c.Capacity.CPU, c.Capacity.Mem>>30, c.VMs, c.Duration, c.Step, c.Window, c.Seed)
	fmt.Fprintf(out, "policy: target %.2f, high %.2f, low %.2f\n\n", c.Policy.Target, c.Policy.High, c.Policy.Low)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "strategy\thosts in use (avg)\tmin\tmax\treleased (avg)\tmigrations\thost-min above high\trounds acted\t")
	for _, r := range results {
		acted := 0
		for _, n := range r.Actions {
			acted += n
		}
		fmt.Fprintf(w, "%s\t%.1f\t%d\t%d\t%.1f\t%d\t%.0f\t%d\t\n", r.Strategy, r.AvgHosts, r.MinHosts, r.MaxHosts,
			r.Released, r.Migrations, r.OverHighHostMinutes, acted)
	}
	return w.Flush()
}
