# mk/qemu10.mk: the suite on QEMU 10.0 beside Debian 12's QEMU 7.2
# (included by Makefile).
#
#   make qemu10        QEMU 10.0 from bookworm-backports unpacked into
#                      build/qemu10 (scripts/deps qemu10; not installed,
#                      cached: a no-op once there)
#   make test-qemu10   on it: the qmp tests, hostd's subpackages, and the
#                      end-to-end tests of hostd and coord named in
#                      QEMU10_E2E (those that exercise what differs in
#                      QEMU 10: live modes, sandboxing, migration, disks);
#                      make test-qemu10-all runs every test of qmp, hostd
#                      and coord there (about 25 minutes more)
#   make bench-qemu10  the live checkpoint's benchmarks on it (BENCH_LIVE),
#                      checkpoint, restore and migration against plain QEMU
#                      (BENCH_OPS) and the multifd migration's
#                      (BENCH_QEMU10); make bench runs them too when
#                      build/qemu10 is there
#
# SYMVIRT_QEMU names the QEMU binary for the whole suite (hostd's --qemu
# default, internal/testguest.Qemu): make test-qemu10 sets it to
# build/qemu10/bin/qemu-system-x86_64.

QEMU10 := $(CURDIR)/build/qemu10/bin/qemu-system-x86_64
QEMU10_PKGS ?= ./qmp/ ./hostd/... ./coord/...
QEMU10_HOSTD_E2E := TestCheckpointRestoreContinuesCounter|TestLiveCheckpointRestoresTheCut|TestMigrateWithPassthroughNIC|TestMigrateFailureResumesSource|TestMigrationStreamTLS|TestRejuvenateKeepsGuestMemory|TestQEMURunsSandboxedAsQEMUUser|TestRAMFileNotReadableByLocalUsers|TestLiveCheckpointWithDiskIsConsistent|TestLiveCheckpointDiskFillsDuringStream|TestStepsSurviveHostdRestart|TestDirectCheckpointRecoveredAfterHostdKill|TestHostdRefusesOldQEMU|TestImagePagesQEMU10Stream|TestLiveModeAutoFollowsQEMUVersion|TestPeerHoldHoldsOnlyTheJobsPeers|TestPeerHoldLostWithHostd|TestPooledRAMCarriesNoGuestData|TestIncomingQEMUWritesNoGuestRAM|TestGuestRAMOnHugeTmpfs|TestPrecopyHeldFromArmToPoint|TestPrecopyImageExactWhereAutoTakesIt
QEMU10_COORD_E2E := TestConsolidateServicesLive|TestLiveJobCutIsConsistent|TestLiveCheckpointFallsBackWhereRefused|TestLivePrecopyJobFencesEachVMAtItsPoint|TestEvacuateDownHostRestartsFromCheckpoint

BENCH_LIVE := TestBenchLiveCheckpoint|TestBenchPrecopyImage|TestBenchJobCheckpoint|TestBenchJobNetworkGap
BENCH_OPS := TestBenchOps
# Benchmarks of what only QEMU 9 and later do (make bench-qemu10 only).
BENCH_QEMU10 := TestBenchMigrateMultifd

.PHONY: qemu10 test-qemu10 test-qemu10-all bench-qemu10

qemu10: deps
	@scripts/deps qemu10 build/qemu10

test-qemu10: qemu10 guest libsymvirt
	SYMVIRT_QEMU=$(QEMU10) SYMVIRT_REQUIRE_QEMU=1 $(GO) test -p 1 -count=1 -timeout 40m ./qmp/ ./hostd/qemu/ ./hostd/snapshot/ ./hostd/policy/ ./hostd/disk/
	SYMVIRT_QEMU=$(QEMU10) SYMVIRT_REQUIRE_QEMU=1 $(GO) test -count=1 -timeout 40m -run '^($(QEMU10_HOSTD_E2E))$$' ./hostd/
	SYMVIRT_QEMU=$(QEMU10) SYMVIRT_REQUIRE_QEMU=1 $(GO) test -count=1 -timeout 40m -run '^($(QEMU10_COORD_E2E))$$' ./coord/

test-qemu10-all: qemu10 guest libsymvirt
	SYMVIRT_QEMU=$(QEMU10) SYMVIRT_REQUIRE_QEMU=1 $(GO) test -p 1 -count=1 -timeout 40m $(QEMU10_PKGS)

bench-qemu10: qemu10 guest build
	@SYMVIRT_QEMU=$(QEMU10) SYMVIRT_BENCH=1 SYMVIRT_REQUIRE_QEMU=1 $(GO) test -p 1 -count=1 -timeout 90m -run '^($(BENCH_LIVE)|$(BENCH_OPS)|$(BENCH_QEMU10))$$' -v ./hostd/ ./coord/ | $(call bench_lines,$(QEMU10)) || (echo "bench on QEMU 10 failed" >&2; exit 1)
