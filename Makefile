# symvirt: make demo (an MPI job through every operation), make test (everything).
GO ?= go
export PATH := $(PATH):/usr/local/go/bin

include mk/guest.mk
include mk/guest-mpi.mk
include mk/qemu10.mk

.PHONY: all build test test-short test-race vet demo demo-vm bench generate libsymvirt libsymvirt-mpi clean

all: build

build: bin/symvirt

bin/symvirt: $(GUEST_GO_SOURCES)
	@mkdir -p $(@D)
	$(GO) build -o $@ ./cmd/symvirt

libsymvirt:
	@$(MAKE) -s -C libsymvirt all
	@$(MAKE) -s -C examples/hook
	@$(MAKE) -s libsymvirt-mpi

# The MPI parts (libsymvirt-pmpi.so, the Fortran example) need Open MPI's
# compilers (scripts/deps installs them); without them their tests skip.
libsymvirt-mpi:
	@if command -v mpicc >/dev/null; then $(MAKE) -s -C libsymvirt/pmpi; \
	else echo "libsymvirt-mpi: no mpicc (scripts/deps): libsymvirt-pmpi.so not built" >&2; fi
	@if command -v mpif90 >/dev/null; then $(MAKE) -s -C examples/mpi-fortran; \
	else echo "libsymvirt-mpi: no mpif90 (scripts/deps): examples/mpi-fortran not built" >&2; fi

vet:
	$(GO) vet ./...

# The whole suite: unit tests, real QEMU under TCG, real namespaces, real
# eBPF. SYMVIRT_REQUIRE_QEMU=1 turns "skip: no guest" into a failure. One
# package at a time (-p 1): the VM packages each load both cores.
test: guest guest-mpi libsymvirt vet
	SYMVIRT_REQUIRE_QEMU=1 $(GO) test -p 1 -count=1 -timeout 40m ./...

# The end-to-end tests too slow for make test under TCG: unmodified LAMMPS
# with libsymvirt-pmpi.so preloaded, across two MPI guests, through
# checkpoint, restart, migration and a node alert (TestPMPILAMMPSInVMs:
# about 6.5 min under TCG here).
.PHONY: test-slow
test-slow: guest guest-mpi libsymvirt
	SYMVIRT_TEST_SLOW=1 SYMVIRT_REQUIRE_QEMU=1 $(GO) test -count=1 -timeout 40m -run '^TestPMPILAMMPSInVMs$$' -v ./e2e/mpi/
	SYMVIRT_TEST_SLOW=1 SYMVIRT_REQUIRE_QEMU=1 $(GO) test -count=1 -timeout 40m -run '^TestHACoordChaos$$' -v ./coord/

# Unit tests only (no QEMU, no root).
test-short:
	$(GO) test -short -count=1 ./...

# The coordinator under the race detector: its unit tests, then its live
# checkpoint and crash end-to-end tests with the binaries built -race
# (GOFLAGS reaches testenv's go build); a race the coordinator reports on
# its stderr fails the e2e test that saw it.
test-race: guest libsymvirt
	$(GO) test -race -count=1 ./coord/machine/ ./coord/run/
	$(GO) test -race -count=1 -run '^Test(Driver|Recovered|Journal)' ./coord/
	GOFLAGS=-race SYMVIRT_REQUIRE_QEMU=1 $(GO) test -count=1 -timeout 40m -run '^(TestLive|TestCoordCrash)' ./coord/

# The MPI job over two Debian VMs through checkpoint, crash, restart,
# migration and a node alert (scripts/demo: e2e/mpi/scenario).
demo: guest-mpi build
	@scripts/demo

# One VM on hostd alone: checkpoint, restore, live migration.
demo-vm: guest build
	@scripts/demo-vm

# Every benchmark on the QEMU the suite runs ($$SYMVIRT_QEMU, else Debian's),
# then, where build/qemu10 is there (make qemu10), the live checkpoint's and
# the operations' against plain QEMU on QEMU 10 (bench-qemu10): each line
# says its QEMU ("qemu").
bench: guest build
	@SYMVIRT_BENCH=1 SYMVIRT_REQUIRE_QEMU=1 $(GO) test -p 1 -count=1 -timeout 90m -run '^(TestBench|TestDependencyAware)' -v ./... | $(call bench_lines,$${SYMVIRT_QEMU:-qemu-system-x86_64}) || (echo "bench failed" >&2; exit 1)
	@if [ -x $(QEMU10) ]; then $(MAKE) --no-print-directory bench-qemu10; fi

# bench_lines keeps a benchmark run's JSON lines, each tagged with the
# version of QEMU binary $(1) unless it says its own; it fails on none.
bench_lines = awk -v q="$$($(1) --version | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')" \
	'/^\{/ { if ($$0 !~ /"qemu":/) sub(/^\{/, "{\"qemu\":\"" q "\","); print; n++ } END { exit n == 0 }'

generate:
	$(GO) generate ./...

# .deb packages in build/packages: symvirt-host (hostd and coord units) and
# symvirt-guest (guestd, libsymvirt); packaging/build-debs says what is in
# each. Needs only dpkg-deb.
.PHONY: package
package: bin/symvirt build/symvirt-static libsymvirt
	@packaging/build-debs build/packages

clean:
	rm -rf bin build
	@$(MAKE) -s -C libsymvirt clean || true
	@$(MAKE) -s -C libsymvirt/pmpi clean || true
	@$(MAKE) -s -C examples/mpi-fortran clean || true

# The consolidation simulation (100 hosts, 1,000 VMs, a day in 5-minute
# rounds): the planner against first-fit decreasing from scratch.
.PHONY: sim-consolidate
sim-consolidate:
	$(GO) run ./cmd/symvirt-sim consolidate

# The boot simulation (1,000 VMs on 100 hosts: fan-out tree, whole-image
# copies, one central NBD server), calibrated with per-phase times measured
# here once (as root, under the e2e lock: namespaces and QEMU);
# sim-boot-calibrate measures again.
BOOTSIM_CAL := build/bootsim-calibration.json
.PHONY: sim-boot sim-boot-calibrate
sim-boot: $(BOOTSIM_CAL)
	$(GO) run ./cmd/symvirt-sim boot --calibration $(BOOTSIM_CAL)

$(BOOTSIM_CAL):
	@mkdir -p build
	SYMVIRT_BOOTSIM_CALIBRATION=$(CURDIR)/$(BOOTSIM_CAL) flock /tmp/symvirt-e2e.lock \
		$(GO) test -count=1 -v -run '^TestCalibrateBoot$$' ./coord/bootsim/

sim-boot-calibrate:
	rm -f $(BOOTSIM_CAL)
	$(MAKE) $(BOOTSIM_CAL)
