// Package testenv runs the real daemons for integration tests: it builds
// the symvirt binary once, starts hostd processes (optionally inside network
// namespaces that stand for hosts), prints their logs only when a test
// fails, and kills every QEMU a test left behind. Where a hostd keeps its
// files it learns from hostd.Layout, and a coordinator's socket from
// coord.SocketPath: never re-derived here.
package testenv
