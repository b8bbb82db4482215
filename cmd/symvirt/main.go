package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v3"
)

// version is set at build time (-ldflags "-X main.version=..."); without
// it, the module version or VCS revision the binary was built from.
var version string

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run runs the CLI and returns its exit code: results go to stdout, errors
// to stderr (with -o json as one JSON line), the code from exitCodesHelp.
func run(args []string, stdout, stderr io.Writer) int {
	root := rootCommand()
	root.Writer, root.ErrWriter = stdout, stderr
	jsonErrors = wantsJSON(args)
	err := root.Run(context.Background(), args)
	if err == nil {
		return exitOK
	}
	return report(stderr, err, jsonErrors)
}

func rootCommand() *cli.Command {
	root := &cli.Command{
		Name:        "symvirt",
		Usage:       "guest-cooperative checkpoint, restart and migration of QEMU VMs",
		Version:     buildVersion(),
		Description: exitCodesHelp,
		Commands:    commands(),

		EnableShellCompletion: true, ConfigureShellCompletionCommand: configureCompletion,
	}
	onUsageErrors(root)
	return root
}

// onUsageErrors makes every command's usage error a usageErr that main
// reports once: the command's help (text mode), then the error.
func onUsageErrors(cmd *cli.Command) {
	cmd.OnUsageError = func(_ context.Context, c *cli.Command, err error, _ bool) error {
		if !jsonErrors {
			root := c.Root()
			defer func(w io.Writer) { root.Writer = w }(root.Writer)
			root.Writer = root.ErrWriter
			if root == c {
				cli.ShowRootCommandHelp(c)
			} else {
				cli.ShowSubcommandHelp(c)
			}
		}
		if c.Root() == c {
			return usageErr("%v", err)
		}
		return usageErr("%s: %v", c.FullName(), err)
	}
	for _, sub := range cmd.Commands {
		onUsageErrors(sub)
	}
}

// jsonErrors: this run reports errors as JSON (its command line has -o json).
var jsonErrors bool

// wantsJSON reports whether the command line asks for JSON output: errors
// are reported the same way, also those found before flags are parsed.
func wantsJSON(args []string) bool {
	for i, a := range args {
		switch {
		case a == "--":
			return false
		case a == "-o=json" || a == "--output=json" || a == "-output=json":
			return true
		case (a == "-o" || a == "--output" || a == "-output") && i+1 < len(args) && args[i+1] == "json":
			return true
		}
	}
	return false
}

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev != "" && (v == "" || v == "(devel)") {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		return fmt.Sprintf("devel-%s%s", rev, dirty)
	}
	if v == "" || v == "(devel)" {
		return "devel (built without version information)"
	}
	return strings.TrimSpace(v)
}
