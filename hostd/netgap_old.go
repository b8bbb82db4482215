package hostd

import (
	"os"

	"github.com/symvirt/symvirt/hostd/snapshot"
)

// oldFenceLift (SYMVIRT_NETGAP_OLD=1) brings back how a job's live
// checkpoint lifted its network fence and streamed its state files before
// the network gap was worked on: the lift after the resume step's
// persisting and lock, the state file left for one sync at its stream's
// end, a background snapshot's stream thread at the lowest priority. For
// benchmarks that compare both in one run (the env of each hostd).
var oldFenceLift = os.Getenv("SYMVIRT_NETGAP_OLD") == "1"

func init() {
	if oldFenceLift {
		snapshot.BackgroundStreamNice = 19
	}
}
