// Package lowest runs work nothing waits for (populating a guest's RAM
// file beside it, hashing a state file after its stream) in a helper
// process at nice 19, not on a thread of the caller's.
//
// A Go process must not run its own code at the lowest priority on a host
// whose cores are busy: such a thread waits long for a CPU, and whatever
// it holds meanwhile the rest of the process waits for. Its madvise held
// hostd's mmap lock (every mmap of hostd's heap stalled behind it, up to
// 1.75 s), and a goroutine of it computing a hash held off the garbage
// collector's stop-the-world, which stopped every other goroutine of
// hostd for hundreds of milliseconds (make bench:
// populate_lowest_mmap_stall, lowest_hash_gc_stall). A helper's locks and
// collector are its own.
//
// Contract:
//   - A helper is the caller's own executable (/proc/self/exe: any binary
//     that links the package registering the task), run again with the
//     task's name and argument in its environment and the file as
//     descriptor 3; nothing else of the caller's (environment, other
//     descriptors) reaches it. It prints its result on standard output
//     (at most MaxOutput bytes are kept) and exits non-zero on failure,
//     its standard error (capped likewise) the error's text.
//   - Serve, called from an init function of the package that does the
//     task, runs it and exits when this process is a helper for it, and
//     returns at once otherwise.
//   - Run starts the helper from a thread at nice 19, so that the process
//     and every thread it makes run there from their first instruction,
//     and waits for it; the context's end kills it.
package lowest
