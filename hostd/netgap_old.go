package hostd

import "os"

// oldFenceLift (SYMVIRT_NETGAP_OLD=1) brings back how a job's live
// checkpoint lifted its network fence and wrote its state files before
// the network gap was worked on: the lift after the resume step's
// persisting and lock, the state file left for one sync at its stream's
// end. For benchmarks that compare both in one run (the env of each hostd).
var oldFenceLift = os.Getenv("SYMVIRT_NETGAP_OLD") == "1"
