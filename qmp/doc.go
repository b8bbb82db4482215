// Package qmp is a context-aware client for the QEMU Machine Protocol (QMP),
// used by symvirt to checkpoint and live-migrate VMs.
//
// It is modelled on kata-containers govmm's QMP client and builds on
// github.com/digitalocean/go-qemu/qmp: events are go-qemu's qmp.Event,
// Version is go-qemu's qmp.Version, and *Client satisfies go-qemu's
// qmp.Monitor interface (Connect/Disconnect/Run/Events), so go-qemu's
// generated API can run on it:
//
//	c, err := qmp.Dial(ctx, "unix", "/run/vm1/qmp.sock")
//	...
//	r := raw.NewMonitor(c) // github.com/digitalocean/go-qemu/qmp/raw
//	st, err := r.QueryStatus()
//
// # Contract
//
//   - Dial and New perform the whole handshake (greeting, then
//     qmp_capabilities) bounded by their ctx. QEMU accepts one QMP client per
//     monitor and leaves further clients connected but silent, so a missing
//     greeting is a real failure mode; the ctx deadline covers it.
//   - One goroutine owns the read side of the monitor and reads every message
//     for the lifetime of the client. Command replies are matched to callers
//     by the "id" each command carries (QEMU answers in order; an id-less
//     error reply, sent when QEMU could not parse a request, goes to the
//     oldest outstanding call). Events are read and dispatched while commands
//     are in flight; a command never waits for anybody to consume events.
//   - Every call takes a context.Context. Waiting for the write lock, the
//     write itself (on transports with write deadlines, e.g. net.Conn) and
//     waiting for the reply all honour it. A call abandoned by its ctx is
//     NOT cancelled in QEMU: the command may still run, and its late reply
//     is discarded. A write that fails part-way leaves the stream unusable,
//     so it disconnects the client.
//   - Calls are safe from any number of goroutines. Writes are serialised;
//     replies are not (many calls may be outstanding).
//   - Disconnect is a closed channel: Done() is closed when the monitor goes
//     away (EOF, read/write error, protocol error, oversized message,
//     Close). Err() then returns an error wrapping ErrDisconnected and the
//     cause. Calls in flight fail promptly with an error wrapping
//     ErrDisconnected, as do calls made afterwards. Subscription channels are
//     closed.
//   - Errors: QEMU error replies are returned as *Error (Class, Desc, Cmd),
//     and errors.Is maps its class to ErrGenericError, ErrCommandNotFound,
//     ErrDeviceNotFound, ErrDeviceNotActive and ErrKVMMissingCap. Other
//     failures are wrapped "qmp CMD: ..." so errors.Is works on the cause
//     (context.DeadlineExceeded, ErrDisconnected, ...).
//   - Events: Subscribe(names...) returns a buffered channel per subscriber
//     (capacity WithEventBuffer, default 256). The reader never blocks on a
//     subscriber: an event that does not fit a subscriber's buffer is dropped
//     for that subscriber and counted (Client.DroppedEvents). Consumers that
//     must not miss events keep their channel drained, or subscribe to just
//     the names they need. Subscribe before issuing the command whose event
//     you wait for (DeviceDel does this for DEVICE_DELETED).
//   - Messages are read with bufio.Reader up to WithMaxMessageSize (default
//     64 MiB) each; a larger one is a fatal protocol error (ErrMessageTooLarge).
//   - File descriptors (ExecuteWithFile, GetFD) travel as SCM_RIGHTS with
//     the command, which needs the transport to be a *net.UnixConn (Dial
//     "unix" gives one); otherwise ErrFDPassingUnsupported. QMP's "oob"
//     capability is not needed for that and is never enabled.
//   - Nothing is logged unless WithLogger is given.
//
// # QEMU 7.2 behaviour worth knowing (verified by the integration tests)
//
//   - "quit": QEMU emits SHUTDOWN, then the {"return": {}}, then drops the
//     connection, typically with ECONNRESET rather than a clean EOF. Quit
//     therefore treats a disconnect as success and waits for Done.
//   - device_del only requests the unplug. On q35 the default is ACPI PCI
//     hotplug for root ports, which needs a guest OS to eject the device:
//     without one, DEVICE_DELETED never arrives (DeviceDel runs into its
//     ctx). Repeating device_del is refused ("already in the process of
//     unplug") while the VM is in prelaunch, and accepted again once the
//     firmware has run. With native PCIe hotplug
//     (-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off) a device in
//     a slot the guest never powered on is unplugged at once, and
//     DEVICE_DELETED follows the reply. Devices cannot be hot-plugged onto
//     pcie.0 itself ("Bus 'pcie.0' does not support hotplugging").
//   - A device the guest ejects leaves QEMU's device tree (unrealized,
//     unparented; out of query-pci and of any migration) at the eject, but
//     DEVICE_DELETED comes only when it is finalized, after QEMU's RCU
//     callbacks, which QEMU batches for up to 50 ms (on 7.2 and 10.0 alike:
//     30-50 ms after the eject). DeviceDel therefore returns once the device
//     is gone from /machine/peripheral (polled every 2 ms, or its
//     DEVICE_DELETED, whichever comes first), and DeviceAdd of the same id
//     waits for the earlier device's DEVICE_DELETED (at most 5 s): a VFIO
//     device keeps its host device until it is finalized. So does Migrate,
//     for every device being finalized: QEMU 10.0 hung for good (its main,
//     vCPU, migration and call_rcu threads all waiting) in a precopy
//     started while one was. A stop-and-save of a shared RAM file copies
//     the file meanwhile.
//   - query-pci lists devices behind a bridge/root port only after the
//     firmware has numbered the bridge's secondary bus: in prelaunch (-S,
//     never run) FindPCIDevice will not find hot-plugged NICs.
//   - MIGRATION events beyond {"status": "setup"} are only emitted with the
//     "events" migration capability enabled (MigrateSetCapabilities).
//   - "fd:NAME" migration works with a pipe passed by getfd; QEMU consumes
//     (closes) the named fd when the migration ends, so closefd afterwards
//     fails. On the destination, query-migrate reports only the status, and
//     the VM takes over the source's run state (a source that never left
//     prelaunch yields a destination in "prelaunch", not "paused").
//
// # Why not go-qemu's SocketMonitor
//
// The transport here is our own rather than go-qemu's qmp.SocketMonitor,
// because SocketMonitor has pitfalls that bite a migration controller:
//
//   - Its event channel is unbuffered and shared by the reader: once anybody
//     called Events, the reader goroutine blocks on each event until it is
//     received, and while it is blocked no command reply is read. A consumer
//     that stops draining events (or is slow, e.g. during a migration that
//     emits MIGRATION / MIGRATION_PASS events) deadlocks every command.
//   - Connect reads the greeting and the qmp_capabilities reply without any
//     timeout or context; a monitor that never sends the greeting (e.g.
//     because another client holds it) hangs Connect forever.
//   - Its reader is a bufio.Scanner with the default 64 KiB token limit: a
//     reply larger than that (query-qmp-schema, query-pci or query-block on a
//     big VM, ...) makes Scan fail with bufio.ErrTooLong; the reader then
//     exits and the monitor is dead for good.
//   - Run has no context and serialises all commands behind one mutex held
//     until the reply arrives, so one slow command blocks all others with no
//     way to give up; RunWithFile also refuses to pass descriptors unless the
//     "oob" capability is advertised, which SCM_RIGHTS does not need.
package qmp
