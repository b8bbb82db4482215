package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord/bootsim"
	"github.com/symvirt/symvirt/internal/cliutil"
)

// bootTarget is the target for the tree (VirtMan: under 120 s).
const bootTarget = 30 * time.Second

// bootReport is the JSON output.
type bootReport struct {
	Calibration bootsim.Calibration `json:"calibration"`
	Config      bootsim.Config      `json:"config"`
	Results     []bootsim.Result    `json:"results"`
	Degrees     []bootsim.Result    `json:"degrees"`
	Variants    []variant           `json:"variants"`
	TargetMet   bool                `json:"target_met"`
}

func runBoot(args []string, out io.Writer) error {
	c := bootsim.Default()
	fs := flag.NewFlagSet("boot", flag.ContinueOnError)
	calFile := fs.String("calibration", "build/bootsim-calibration.json", "measured figures (make sim-boot-calibrate); none: placeholders")
	fs.IntVar(&c.Hosts, "hosts", c.Hosts, "hosts (host 0 is the seed)")
	fs.IntVar(&c.VMs, "vms", c.VMs, "VMs, spread evenly")
	fs.IntVar(&c.Degree, "degree", c.Degree, "fan-out of the tree")
	imageGiB := fs.Float64("image-gib", 15, "image size, GiB (VirtMan's: 15)")
	readMiB := fs.Float64("read-mib", 512, "distinct bytes a VM reads during boot, MiB")
	nicGbps := fs.Float64("nic-gbps", 10, "each host's link, Gbit/s (what it serves and fetches share it)")
	diskMBps := fs.Float64("disk-mbps", 500, "the seed's disk, MB/s")
	fs.IntVar(&c.QueueDepth, "queue-depth", c.QueueDepth, "NBD requests in flight per connection")
	fs.IntVar(&c.Parallel, "parallel", c.Parallel, "VMs each host starts at once")
	fs.IntVar(&c.Kill, "kill", 0, "(a): this host (not the seed) dies at --kill-at; its children re-parent after --detect")
	fs.DurationVar(&c.KillAt, "kill-at", time.Second, "when --kill dies")
	fs.DurationVar(&c.Detect, "detect", time.Second, "how long a dead parent takes to notice")
	fs.DurationVar(&c.Step, "step", c.Step, "simulation time step")
	output := fs.String("output", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("--output %q: want table or json", *output)
	}
	c.Image, c.Read = int64(*imageGiB*(1<<30)), int64(*readMiB*(1<<20))
	c.NIC, c.Disk = *nicGbps*1e9/8, *diskMBps*1e6
	cal, err := loadCalibration(*calFile)
	if err != nil {
		return err
	}
	if c, err = cal.Apply(c); err != nil {
		return err
	}
	rep := bootReport{Calibration: cal, Config: c}
	for _, m := range []bootsim.Mode{bootsim.Tree, bootsim.Copy, bootsim.Central} {
		r, err := bootsim.Run(c, m)
		if err != nil {
			return err
		}
		rep.Results = append(rep.Results, r)
	}
	rep.TargetMet = rep.Results[0].Ready < bootTarget
	for d := 1; d <= 8; d++ {
		cd := c
		cd.Degree = d
		r, err := bootsim.Run(cd, bootsim.Tree)
		if err != nil {
			return err
		}
		rep.Degrees = append(rep.Degrees, r)
	}
	if rep.Variants, err = variants(c); err != nil {
		return err
	}
	if *output == "json" {
		e := json.NewEncoder(out)
		e.SetIndent("", "  ")
		return e.Encode(rep)
	}
	return bootTable(out, rep)
}

// variant is (a) with one assumption changed.
type variant struct {
	Change string         `json:"change"`
	Result bootsim.Result `json:"result"`
}

// variants reruns (a) with each assumed figure changed, to show how much
// the prediction rests on it.
func variants(c bootsim.Config) ([]variant, error) {
	type change struct {
		name string
		set  func(*bootsim.Config)
	}
	var out []variant
	for _, ch := range []change{
		{"read set 128 MiB", func(c *bootsim.Config) { c.Read = 128 << 20 }},
		{"read set 2 GiB", func(c *bootsim.Config) { c.Read = 2 << 30 }},
		{"read set 4 GiB", func(c *bootsim.Config) { c.Read = 4 << 30 }},
		{"NIC 1 Gbit/s", func(c *bootsim.Config) { c.NIC = 1e9 / 8 }},
		{"NIC 25 Gbit/s", func(c *bootsim.Config) { c.NIC = 25e9 / 8 }},
		{"seed disk 100 MB/s", func(c *bootsim.Config) { c.Disk = 100e6 }},
		{"1 NBD request in flight", func(c *bootsim.Config) { c.QueueDepth = 1 }},
		{"1 VM started at once per host", func(c *bootsim.Config) { c.Parallel = 1 }},
		{"10 VMs started at once per host", func(c *bootsim.Config) { c.Parallel = 10 }},
		{"host 1 (below the seed) dies at 1 s, noticed in 1 s", func(c *bootsim.Config) { c.Kill, c.KillAt, c.Detect = 1, time.Second, time.Second }},
	} {
		v := c
		ch.set(&v)
		if v.Read > v.Image {
			continue
		}
		r, err := bootsim.Run(v, bootsim.Tree)
		if err != nil {
			return nil, err
		}
		out = append(out, variant{ch.name, r})
	}
	return out, nil
}

// loadCalibration reads the calibration file; "none" gives placeholders.
func loadCalibration(file string) (bootsim.Calibration, error) {
	var cal bootsim.Calibration
	if file == "none" {
		return bootsim.Calibration{Host: "none: placeholder phase times, not measured"}, nil
	}
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return cal, fmt.Errorf("calibration %s: not measured yet: run make sim-boot-calibrate (or --calibration none for placeholders)", file)
	}
	if err != nil {
		return cal, err
	}
	if err := json.Unmarshal(data, &cal); err != nil {
		return cal, fmt.Errorf("calibration %s: %w", file, err)
	}
	return cal, nil
}

func bootTable(out io.Writer, rep bootReport) error {
	c := rep.Config
	fmt.Fprintf(out, "calibration (measured on %s at %s):\n", rep.Calibration.Host, rep.Calibration.When)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, f := range rep.Calibration.Figures {
		fmt.Fprintf(w, "  %s\t%s\t%s\n", f.Name, figure(f), f.Source)
	}
	w.Flush()
	fmt.Fprintf(out, "assumed (flags): image %s, read set %s per VM, NIC %.0f Gbit/s per host, seed disk %.0f MB/s,\n",
		cliutil.Bytes(c.Image), cliutil.Bytes(c.Read), c.NIC*8/1e9, c.Disk/1e6)
	fmt.Fprintf(out, "  %d NBD requests in flight per connection (one connection: %s/s), %d VMs started at once per host\n",
		c.QueueDepth, cliutil.Bytes(int64(c.Conn())), c.Parallel)
	fmt.Fprintf(out, "per VM: overlay %v + QEMU start %v + reading %s + clone resume %v\n\n",
		c.Overlay.Round(time.Microsecond*100), c.Start.Round(time.Millisecond), cliutil.Bytes(c.Read), c.Resume.Round(time.Millisecond))
	fmt.Fprintf(out, "prediction: %d VMs on %d hosts\n", c.VMs, c.Hosts)
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "\tall ready\tp50\tfirst\tseed served\tseed disk\t")
	names := map[string]string{"tree": fmt.Sprintf("(a) fan-out tree, degree %d", c.Degree),
		"copy": "(b) copy the image to each host first", "central": "(c) one central NBD server"}
	for _, r := range rep.Results {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t\n", names[r.Mode], secs(r.Ready), secs(r.P50), secs(r.First),
			cliutil.Bytes(r.SeedServed), cliutil.Bytes(r.SeedDisk))
	}
	w.Flush()
	fmt.Fprintln(out, "\n(a) by degree:")
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "degree\tdepth\tall ready\tseed served\t")
	for i, r := range rep.Degrees {
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t\n", i+1, r.Depth, secs(r.Ready), cliutil.Bytes(r.SeedServed))
	}
	w.Flush()
	fmt.Fprintf(out, "\n(a), degree %d, with one assumption changed:\n", c.Degree)
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, v := range rep.Variants {
		lost := ""
		if v.Result.Lost > 0 {
			lost = fmt.Sprintf("(%d VMs on the dead host lost)", v.Result.Lost)
		}
		fmt.Fprintf(w, "%s\t%s\t  %s\n", v.Change, secs(v.Result.Ready), lost)
	}
	w.Flush()
	verdict := "met"
	if !rep.TargetMet {
		verdict = "NOT met"
	}
	fmt.Fprintf(out, "\ntarget: (a) under %v (VirtMan: under 120 s): %s (%s)\n", bootTarget, verdict, secs(rep.Results[0].Ready))
	return nil
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func figure(f bootsim.Figure) string {
	switch f.Unit {
	case "s":
		return fmt.Sprintf("%.3f ms", f.Value*1e3)
	case "B/s":
		return cliutil.Bytes(int64(f.Value)) + "/s"
	case "B":
		return cliutil.Bytes(int64(f.Value))
	}
	return fmt.Sprintf("%g %s", f.Value, f.Unit)
}
