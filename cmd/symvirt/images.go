package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/urfave/cli/v3"
)

func imagesCommand() *cli.Command {
	return &cli.Command{
		Name:  "images",
		Usage: "base images VMs boot from without copying them first (symvirt boot --image)",
		Flags: coordFlags(),
		Commands: []*cli.Command{
			{
				Name: "add", Usage: "register an image file on its seed host (again on another host: a replica)", ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "host", Required: true, Usage: "the host that has the file"},
					&cli.StringFlag{Name: "path", Required: true, Usage: "raw image file on that host (in its image_dirs)"},
					&cli.IntFlag{Name: "chunk", Usage: "fetch unit in bytes (default 256 KiB)"},
				},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					name, err := oneArg(cmd, "NAME")
					if err != nil {
						return err
					}
					req := coord.ImageAddRequest{Name: name, Host: cmd.String("host"), Path: cmd.String("path"), Chunk: int(cmd.Int("chunk"))}
					return imagesAction(cmd, func(c *coord.Client) (any, error) { return c.AddImage(ctx, req) })
				},
			},
			{
				Name: "list", Usage: "list the registered images",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					return imagesAction(cmd, func(c *coord.Client) (any, error) { return c.Images(ctx) })
				},
			},
			{
				Name: "rm", Usage: "forget an image and drop it from every host (stop its VMs first)", ArgsUsage: "NAME",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					name, err := oneArg(cmd, "NAME")
					if err != nil {
						return err
					}
					return imagesAction(cmd, func(c *coord.Client) (any, error) { return deleted{name}, c.RemoveImage(ctx, name) })
				},
			},
		},
	}
}

func imagesAction(cmd *cli.Command, fn func(*coord.Client) (any, error)) error {
	return coordAction(cmd, fn, printImages)
}

// coordAction runs fn against the coordinator and prints its result, as
// JSON or through text.
func coordAction(cmd *cli.Command, fn func(*coord.Client) (any, error), text func(io.Writer, any)) error {
	out, err := output(cmd)
	if err != nil {
		return err
	}
	c, err := coordClient(cmd)
	if err != nil {
		return err
	}
	v, err := fn(c)
	if err != nil {
		return err
	}
	return out.Print(v, func(w io.Writer) { text(w, v) })
}

func printImages(w io.Writer, v any) {
	var list []coord.Image
	switch x := v.(type) {
	case coord.Image:
		list = []coord.Image{x}
	case []coord.Image:
		list = x
	default:
		fmt.Fprintf(w, "%v\n", v)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tCHUNK\tSEEDS\tID")
	for _, img := range list {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", img.Name, img.Size, img.Chunk, strings.Join(img.Seeds, ","), img.ID[:16])
	}
	tw.Flush()
}

// imageBootFlags are `symvirt boot`'s flags for booting from an image.
func imageBootFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "image", Usage: "boot from this registered image (symvirt images add) instead of a template"},
		&cli.StringFlag{Name: "from", Usage: "with --image: VM spec (YAML, no disks) for each VM; its name is ignored"},
		&cli.IntFlag{Name: "degree", Usage: "children per host in the fan-out tree of the image, or of the template to hosts that lack it (default 2)"},
		&cli.IntFlag{Name: "seed-degree", Usage: "children of the fan-out tree's seed (default 1)"},
		&cli.BoolFlag{Name: "copy", Usage: "with --image: copy the whole image to each host first (the baseline)"},
	}
}

// imageBoot fills req's image fields from the flags.
func imageBoot(cmd *cli.Command, req *coord.BootRequest) error {
	req.Image = cmd.String("image")
	req.Fanout = coord.ImageFanout{Degree: int(cmd.Int("degree")), SeedDegree: int(cmd.Int("seed-degree")), Copy: cmd.Bool("copy")}
	if req.Image == "" {
		return nil
	}
	if cmd.String("from") == "" {
		return usageErr("boot --image needs --from SPEC (symvirt boot --help)")
	}
	spec, err := hostd.LoadSpec(cmd.String("from"))
	if err != nil {
		return err
	}
	req.Spec = &spec
	if req.Job == "" {
		req.Job = req.Image
	}
	return nil
}
