package main

import (
	"context"
	"fmt"
	"os"

	"github.com/urfave/cli/v3"
)

func main() {
	if err := rootCommand().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "symvirt:", err)
		os.Exit(1)
	}
}

func rootCommand() *cli.Command {
	return &cli.Command{
		Name:     "symvirt",
		Usage:    "guest-cooperative checkpoint, restart and migration of QEMU VMs",
		Commands: commands(),

		EnableShellCompletion: true, ConfigureShellCompletionCommand: configureCompletion,
	}
}
