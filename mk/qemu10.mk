# mk/qemu10.mk: the suite on QEMU 10.0 beside Debian 12's QEMU 7.2
# (included by Makefile).
#
#   make qemu10        QEMU 10.0 from bookworm-backports unpacked into
#                      build/qemu10 (scripts/deps qemu10; not installed,
#                      cached: a no-op once there)
#   make test-qemu10   the tests of qmp, hostd and coord (their end-to-end
#                      tests included) on it
#
# SYMVIRT_QEMU names the QEMU binary for the whole suite (hostd's --qemu
# default, internal/testguest.Qemu): make test-qemu10 sets it to
# build/qemu10/bin/qemu-system-x86_64.

QEMU10 := $(CURDIR)/build/qemu10/bin/qemu-system-x86_64
QEMU10_PKGS ?= ./qmp/ ./hostd/... ./coord/...

.PHONY: qemu10 test-qemu10

qemu10: deps
	@scripts/deps qemu10 build/qemu10

test-qemu10: qemu10 guest libsymvirt
	SYMVIRT_QEMU=$(QEMU10) SYMVIRT_REQUIRE_QEMU=1 $(GO) test -p 1 -count=1 -timeout 40m $(QEMU10_PKGS)
