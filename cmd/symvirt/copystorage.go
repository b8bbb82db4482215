package main

import "github.com/urfave/cli/v3"

// copyStorageFlag is migrate's --copy-storage (symvirt migrate and
// symvirt vm migrate).
func copyStorageFlag() cli.Flag {
	return &cli.BoolFlag{Name: "copy-storage", Usage: "copy the VM's disks to the destination (hosts that share no disk storage): " +
		"mirrored over NBD between the hostds while the memory pre-copies; also done when the source host's config says local_disks"}
}
