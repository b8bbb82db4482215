# mk/guest.mk: host dependencies and the test guest (included by Makefile).
#
#   make deps                   install the Debian packages (scripts/deps)
#   make build/symvirt-static   static symvirt binary, put into the guest
#   make guest                  build/guest/{vmlinuz,initrd.img,KVER}
#                               (scripts/mkguest; a no-op when up to date)

GO ?= go

GUEST_GO_SOURCES := $(shell find . -name '*.go' -not -path './build/*' -not -path './.git/*' -not -name '*_test.go') go.mod $(wildcard go.sum)

.PHONY: deps guest

deps:
	@scripts/deps

build/symvirt-static: $(GUEST_GO_SOURCES)
	@mkdir -p $(@D)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $@ ./cmd/symvirt

guest: deps build/symvirt-static
	@scripts/mkguest
