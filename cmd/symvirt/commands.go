package main

import "github.com/urfave/cli/v3"

// commands lists every top-level subcommand; each lives in its own file.
func commands() []*cli.Command {
	return append([]*cli.Command{
		hostdCommand(),
		vmCommand(),
		rejuvenateCommand(),
		guestdCommand(),
		hookCommand(),
		certsCommand(),
		taintCommand(),
	}, jobCommands()...)
}
