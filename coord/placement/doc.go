// Package placement decides where VMs should run: which moves pack
// under-used VMs onto the fewest hosts (consolidation) and which moves
// relieve a host above its high-water mark (scale out).
//
// It is pure: a snapshot of hosts and VMs with their measured usage in, a
// Plan out; no I/O, no clock, deterministic for the same input. coord
// gathers the usage from the hostds and carries a plan out as migrations
// through coord/machine; this package never operates anything.
//
// # Contract
//
//   - A plan never places a VM on a host that is Drained or would exceed the
//     headroom target (Policy.Target of CPU and memory capacity) on that host.
//   - VMs sharing an AntiAffinity group never share a host after the plan;
//     a VM with Affinity labels only goes to hosts carrying all of them.
//   - Consolidate frees as many hosts as possible and, among the plans that
//     free that many, makes as few migrations as it can find.
//   - A VM whose Pinned is true is never moved.
package placement
