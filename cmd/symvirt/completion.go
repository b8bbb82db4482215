package main

import "github.com/urfave/cli/v3"

// configureCompletion shows the completion command that urfave/cli adds
// with EnableShellCompletion (`symvirt completion bash|zsh|fish`; its
// scripts ask `symvirt ... --generate-shell-completion`). The packages
// install its output for bash and zsh.
func configureCompletion(c *cli.Command) {
	c.Hidden = false
	c.Category = catAdmin
	c.Usage = "print a shell completion script: source <(symvirt completion bash)"
}
