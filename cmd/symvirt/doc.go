// Command symvirt is the one binary of the project: the daemons (hostd,
// guestd, coord) are subcommands, next to the operator and in-guest commands.
package main
