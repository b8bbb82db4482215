package main

import "github.com/urfave/cli/v3"

// Help categories: who runs a command, and where (help lists them in
// alphabetical order).
const (
	catCluster = "Cluster: jobs across hosts (talk to the coordinator: --coord, SYMVIRT_COORD)"
	catDaemons = "Daemons (run each under a service manager)"
	catGuest   = "Guest: inside a VM"
	catHost    = "Host: one host's VMs (talk to its hostd: --host, SYMVIRT_HOST)"
	catAdmin   = "Setup"
)

// commands lists every top-level subcommand, each in its help category;
// each lives in its own file.
func commands() []*cli.Command {
	in := func(cat string, cmds ...*cli.Command) []*cli.Command {
		for _, c := range cmds {
			c.Category = cat
		}
		return cmds
	}
	var all []*cli.Command
	all = append(all, in(catCluster, clusterCommands()...)...)
	all = append(all, in(catCluster, scheduleCommand())...)
	all = append(all, in(catCluster, opsCommand(), bootCommand(), imagesCommand())...)
	all = append(all, in(catHost, vmCommand(), rejuvenateCommand(), templateCommand())...)
	all = append(all, in(catDaemons, coordDaemonCommand(), hostdCommand(), guestdCommand())...)
	all = append(all, in(catGuest, hookCommand(), taintCommand())...)
	all = append(all, in(catAdmin, certsCommand())...)
	return all
}
