# kbatch — one hand-written Makefile.
#   make                 build build/kbatch (and the test fakes)
#   make SAN=address,undefined   the same with sanitizers, in build/san/
#   make deps            install missing Debian packages, build librdkafka
#                        2.8.0 into build/rdkafka when missing (idempotent)
#   make test            unit + integration + e2e (starts what it needs)
#   make demo            a whole batch end to end on a local broker
#   make bench           benchmarks (not part of make test)

# V=1 shows the full commands.
Q         := $(if $(V),,@)
PKGS      := rdkafka libcurl jansson avro-c libconfig libmicrohttpd libcrypto
CC        ?= cc
SAN       ?=
ifeq ($(SAN),)
BUILD     := build
else
BUILD     := build/san
endif

VERSION   := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
GITREV    := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

CFLAGS    ?= -O2 -g
CFLAGS    += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
             -Wno-format-truncation \
             -MMD -MP -Iworker -DKB_VERSION='"$(VERSION)"' -DKB_GITREV='"$(GITREV)"'
# librdkafka 2.8.0 built from Debian 13's source by tests/rdkafka.sh into
# RDKAFKA_PREFIX (when missing), found through pkg-config, loaded through
# the rpath (no LD_LIBRARY_PATH). RDKAFKA_PREFIX= (empty) links the system
# one (Debian 12: 2.0.2, with the bugs docs/reliability.md describes).
RDKAFKA_PREFIX ?= $(CURDIR)/build/rdkafka
PKG_CONFIG := pkg-config
ifneq ($(RDKAFKA_PREFIX),)
RDKAFKA_PC := $(RDKAFKA_PREFIX)/lib/pkgconfig/rdkafka.pc
# (make 4.3's $(shell) does not see variables the makefile exports)
PKG_CONFIG := PKG_CONFIG_PATH='$(RDKAFKA_PREFIX)/lib/pkgconfig$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH))' pkg-config
LDFLAGS   += -Wl,-rpath,$(RDKAFKA_PREFIX)/lib
endif
# -isystem: the libraries' headers are not ours to warn about (clang's
# -Wignored-qualifiers on librdkafka 2.8's rdkafka.h).
PKG_CFLAGS = $(patsubst -I%,-isystem %,$(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null))
PKG_LIBS   = $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
LDLIBS    += $(PKG_LIBS) -lm -lpthread
ifneq ($(SAN),)
CFLAGS    += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS   += -fsanitize=$(SAN)
endif

# Every module of the binary but main.c goes into a static library that the
# unit and integration tests link against.
LIB_SRCS  := $(filter-out worker/main.c,$(wildcard worker/*.c))
LIB_OBJS  := $(LIB_SRCS:worker/%.c=$(BUILD)/obj/%.o)
LIB       := $(BUILD)/libkbatch.a
BIN       := $(BUILD)/kbatch

FAKE_SRCS := $(wildcard tests/fakes/*.c)
FAKES     := $(FAKE_SRCS:tests/fakes/%.c=$(BUILD)/%)

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
INTEG_SRCS:= $(wildcard tests/integration/test_*.c)
INTEG_BINS:= $(INTEG_SRCS:tests/integration/%.c=$(BUILD)/tests/%)

.PHONY: all deps test test-unit test-integration test-e2e demo bench clean format check-deps \
        test-san test-fuzz fuzz test-chaos test-deploy
# serde_bench: the serde micro-benchmark (make bench) and the encode/decode
# tool of tests/e2e/test_avro.py; links the library.
SERDE_BENCH := $(BUILD)/serde_bench

all: $(BIN) $(FAKES) $(SERDE_BENCH)

$(BUILD)/obj/%.o: worker/%.c | $(BUILD)/obj
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

# serde.c compiles schemas/*.avsc in (.incbin), which -MMD does not see.
$(BUILD)/obj/serde.o: $(wildcard schemas/*.avsc)

$(LIB): $(LIB_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(BUILD)/obj/main.o $(LIB)
	@$(if $(Q),echo "  LINK    $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%: tests/fakes/%.c | $(BUILD)/obj
	@$(if $(Q),echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(LDLIBS)

$(SERDE_BENCH): tests/bench/serde_bench.c $(LIB) | $(BUILD)/obj
	@$(if $(Q),echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/tests/test_%: tests/unit/test_%.c $(LIB) | $(BUILD)/tests
	@$(if $(Q),echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) -lcriterion

$(BUILD)/tests/test_%: tests/integration/test_%.c $(LIB) | $(BUILD)/tests
	@$(if $(Q),echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) $(PKG_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) -lcriterion

$(BUILD)/obj $(BUILD)/tests:
	mkdir -p $@

# Everything compiled includes rdkafka.h: build the library first (and
# recompile when it changes).
$(BUILD)/obj: $(RDKAFKA_PC)
$(LIB_OBJS) $(BUILD)/obj/main.o: $(RDKAFKA_PC)
ifneq ($(RDKAFKA_PC),)
$(RDKAFKA_PC):
	@tests/rdkafka.sh $(RDKAFKA_PREFIX)
endif

deps:
	@tests/deps.sh
	$(if $(RDKAFKA_PREFIX),@tests/rdkafka.sh $(RDKAFKA_PREFIX))

# The whole suite. Each part fails loudly; e2e starts its own broker and fakes.
test: deps
	@$(MAKE) --no-print-directory all $(UNIT_BINS) $(INTEG_BINS)
	@$(MAKE) --no-print-directory test-unit test-integration test-san test-fuzz test-e2e test-chaos
	@if tests/deploy/available.sh; then $(MAKE) --no-print-directory test-deploy; \
	else echo "test-deploy: skipped (podman neither installed nor installable)"; fi

test-unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t --jobs 2; done

test-integration: $(INTEG_BINS)
	@set -e; for t in $(INTEG_BINS); do echo "== $$t"; $$t --jobs 1; done

test-e2e: all
	@KBATCH_BUILD=$(BUILD) tests/e2e/run.sh

# The container image (podman, from debootstrap'ed Debian) and the
# Kubernetes manifests (kustomize + kubeconform, offline); docs/deploy.md.
test-deploy: deps
	@tests/deploy/run.sh

# Unit and integration tests again, built with ASan + UBSan (build/san/).
test-san:
	@$(MAKE) --no-print-directory SAN=address,undefined all
	@$(MAKE) --no-print-directory SAN=address,undefined test-unit test-integration

# libFuzzer targets (tests/fuzz/, clang, build/fuzz/): the saved corpora and
# regressions, then FUZZ_SECONDS of fuzzing per target. `make fuzz`: longer
# runs by hand (FUZZ_LONG_SECONDS per target) that grow the saved corpora
# (docs/reliability.md).
FUZZ_SECONDS ?= 10
FUZZ_LONG_SECONDS ?= 600
test-fuzz:
	@tests/fuzz/run.sh check $(FUZZ_SECONDS)

fuzz:
	@tests/fuzz/run.sh fuzz $(FUZZ_LONG_SECONDS)

# Chaos scenarios against a real broker (tests/chaos/, docs/reliability.md).
test-chaos: all
	@KBATCH_BUILD=$(BUILD) tests/chaos/run.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@KBATCH_BUILD=$(BUILD) examples/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@$(SERDE_BENCH)
	@KBATCH_BUILD=$(BUILD) tests/bench/run.sh

format:
	clang-format -i worker/*.c worker/*.h tests/unit/*.c tests/fakes/*.c

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(BUILD)/obj/main.d
