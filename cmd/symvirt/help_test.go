package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v3"
)

// Every command says what it does, and every flag what it means: a
// newcomer reads --help, not the source.
func TestEveryCommandAndFlagHasUsage(t *testing.T) {
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(path + " " + c.Name)
			if c.Usage == "" {
				t.Errorf("symvirt %s: no usage text", name)
			}
			for _, f := range c.Flags {
				if d, ok := f.(cli.DocGenerationFlag); ok && d.GetUsage() == "" {
					t.Errorf("symvirt %s --%s: no usage text", name, f.Names()[0])
				} else if ok && strings.Contains(d.GetUsage(), "`") {
					t.Errorf("symvirt %s --%s: a backquote in its usage becomes the value's placeholder", name, f.Names()[0])
				}
			}
			walk(name, c.Commands)
		}
	}
	walk("", rootCommand().Commands)
}
