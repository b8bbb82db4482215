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
//   - A host that receives no VM keeps what it has: Consolidate does not
//     relieve a host above its Target (ScaleOut does), and a drained host
//     keeps its VMs unless moving them frees it.
//   - Moves are ordered: after each one its destination is within the
//     Target and holds no other VM of the mover's anti-affinity group. A
//     move that must wait for another (a swap) goes through a third host
//     with room (one more move) or, failing that, may fill its destination
//     past the Target for the while, never past its capacity.
//   - ScaleOut brings every host above High back within the Target by
//     moving the fewest VMs it can, to hosts in use first, then to empty
//     ones; Plan.Overloaded lists the hosts it could not relieve.
//   - Errors wrap ErrInvalid (malformed input) or ErrInfeasible.
//
// # How
//
// Consolidate searches small inputs (up to exactVMs VMs) exactly, by branch
// and bound under a node budget; larger ones (1,000 VMs on 100 hosts plan
// in milliseconds) greedily: it tries to empty the hosts with the fewest,
// then the lightest, VMs, each VM to the tightest host still in use that
// takes it, and keeps the better outcome. The brute-force test
// (TestConsolidateMatchesBruteForce) measures both against every
// assignment of small instances. Policy.Low is not used here: it is the
// caller's consolidation trigger (hysteresis between Low and High).
package placement
