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
//   - A plan never places a VM on a host that is Drained, or that ends the
//     plan above the headroom target (Policy.Target of CPU and memory
//     capacity); for the moments in between, see the ordering below.
//   - VMs sharing an AntiAffinity group never share a host after the plan;
//     a VM with Affinity labels only goes to hosts carrying all of them.
//   - Consolidate frees as many hosts as possible and, among the plans that
//     free that many, makes as few migrations as it can find.
//   - A VM whose Pinned is true is never moved.
//   - A host that receives no VM keeps what it has: Consolidate does not
//     relieve a host above its Target (ScaleOut does), and a drained host
//     keeps its VMs unless moving them frees it.
//   - Each VM moves at most once, straight to where it ends. Moves are
//     ordered: after each one its destination holds no other VM of the
//     mover's anti-affinity group and is within the Target; when no order
//     allows that (a swap between two full hosts), one move may fill its
//     destination past the Target for the while, never past its capacity.
//     A placement no such order reaches is not planned.
//   - Move.Wave groups the moves that may run concurrently: a wave starts
//     when the previous one has finished, and its moves fit together even
//     while each migrating VM still holds its source host.
//   - ScaleOut acts when a host is above High: it brings that host and
//     every other host above the Target back within the Target by moving
//     few VMs (the smallest whose leaving suffices, else the largest, and
//     again), each to the roomiest host in use that takes it, else to an
//     empty one; Plan.Overloaded lists the hosts still above High.
//   - Errors wrap ErrInvalid (malformed input) or ErrInfeasible.
//
// # How
//
// Consolidate first plans greedily: it repairs anti-affinity, then tries
// to empty the hosts one at a time (drained first, then in three orders:
// fewest VMs, lightest, smallest capacity; each VM to the tightest host
// still in use that takes it, largest VM first, or most constrained first
// when that fails) and keeps the best outcome; 1,000 VMs on 100 hosts plan
// in milliseconds. Inputs up to exactVMs VMs are then searched by branch
// and bound from that plan, under a deterministic work budget, and their
// moves ordered by a search over the sets of moves done. The brute-force
// test (TestConsolidateMatchesBruteForce) measures both against every
// assignment of small instances. Policy.Low is not used here: it is the
// caller's consolidation trigger (hysteresis between Low and High).
package placement
