package placement

// Resources is a quantity of CPU (in cores, fractional) and memory (bytes).
type Resources struct {
	CPU float64 `json:"cpu"`
	Mem int64   `json:"mem"`
}

// Host is one hostd's capacity and labels.
type Host struct {
	Name     string            `json:"name"`
	Capacity Resources         `json:"capacity"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Drained hosts (cordoned) take no VM; the VMs on them may stay.
	Drained bool `json:"drained,omitempty"`
}

// VM is one VM's place and its usage measured over the coordinator's window.
type VM struct {
	Name string    `json:"name"`
	Job  string    `json:"job"`
	Host string    `json:"host"`
	Use  Resources `json:"use"`
	// AntiAffinity names a group whose VMs must run on distinct hosts.
	AntiAffinity string `json:"anti_affinity,omitempty"`
	// Affinity labels a destination host must carry (key=value, all of them).
	Affinity map[string]string `json:"affinity,omitempty"`
	Pinned   bool              `json:"pinned,omitempty"`
}

// Policy is the planner's targets, each a fraction of a host's capacity.
type Policy struct {
	// Target is the fill a plan may bring a host up to (e.g. 0.8).
	Target float64 `json:"target"`
	// High is the high-water mark above which ScaleOut relieves a host.
	High float64 `json:"high"`
	// Low is the low-water mark under which a caller's loop consolidates
	// (its hysteresis: nothing happens between Low and High). The planner
	// itself does not read it.
	Low float64 `json:"low,omitempty"`
}

// Move is one migration of a plan.
type Move struct {
	VM   string `json:"vm"`
	Job  string `json:"job"`
	From string `json:"from"`
	To   string `json:"to"`
	// Wave groups moves that may run at the same time: every move of wave
	// k must finish before wave k+1 starts; within a wave the order does
	// not matter. Waves number from 0, in plan order.
	Wave int `json:"wave"`
}

// Plan is the moves to make, in order, and the hosts they leave empty.
type Plan struct {
	Moves []Move   `json:"moves"`
	Freed []string `json:"freed,omitempty"`
	// Overloaded lists the hosts still above Policy.High after the plan.
	Overloaded []string `json:"overloaded,omitempty"`
}

// The entry points (consolidate.go, scaleout.go):
//
//	func Consolidate(hosts []Host, vms []VM, p Policy) (Plan, error)
//	func ScaleOut(hosts []Host, vms []VM, p Policy) (Plan, error)
//
// Both return ErrInfeasible (wrapped) when the current placement already
// violates a constraint no move can repair.
