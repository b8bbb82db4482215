// Package sim replays a synthetic day of VM load against a placement
// strategy and measures what it costs and saves: hosts in use (so hosts
// released), migrations made, and host-minutes above the high-water mark.
//
// It is pure and deterministic: the trace comes from a seeded generator
// (per VM a diurnal sinusoid with its own phase and amplitude, plus random
// bursts), time is a step counter, and nothing is operated. Each round the
// strategy sees every VM's usage measured over a window (the per-step
// maximum over Config.Window, as the coordinator's usage collection would)
// and returns moves; the time above High is counted from the actual load
// the placement carried during the step before the round.
//
// Two strategies are provided: Planner, the coord/placement planner with
// hysteresis (ScaleOut when a host is above High, Consolidate when the
// hosts in use are on the whole below Low, nothing in between), and FFD,
// first-fit decreasing from scratch every round, whose migrations are the
// VMs its new placement puts elsewhere.
package sim
