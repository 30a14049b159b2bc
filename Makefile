# secnet: `make demo` and `make test` do all the set-up on a fresh Debian host (as root).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := $(PY) -m pytest
export PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

.PHONY: all deps venv engine image plugin-up plugin-down test unit kernel e2e demo clean-run bench bench-dns plugin plugin-push

all: test

deps:
	@bash scripts/install-deps.sh

venv: deps
	@bash scripts/venv.sh

engine: deps
	@bash scripts/engine.sh

image: engine
	@bash scripts/test-image.sh

plugin-up: venv engine
	@bash scripts/plugin.sh start

plugin-down:
	@bash scripts/plugin.sh stop

# unit and kernel run on parallel pytest-xdist workers: a kernel test lives in its
# own namespaces and pin directory (uuid names), so two never meet.
unit: venv
	$(PYTEST) -q -n auto tests/unit

kernel: venv
	$(PYTEST) -q -n 2 tests/kernel

# one dockerd: the e2e tier runs in order in one process (E2E_WORKERS=2: two
# xdist workers, a file each; `exclusive` tests run alone, tests/e2e/workers.py)
E2E_WORKERS ?= 0
e2e: venv image plugin-up
	$(PYTEST) -q $(if $(filter-out 0,$(E2E_WORKERS)),-n $(E2E_WORKERS) --dist loadfile) tests/e2e

# The whole suite, all three tiers at the same time: the e2e tier in order in
# one pytest, unit and kernel on two xdist workers in another (scripts/test.sh).
test: venv image plugin-up
	@bash scripts/test.sh

demo: venv image plugin-up
	@bash scripts/demo.sh

# The managed plugin (Dockerfile, config.json): build it and install it as
# `secnet` (driver `-d secnet:latest`); push it with REGISTRY=host:port.
plugin: venv engine
	@bash scripts/plugin-build.sh install

plugin-push: venv engine
	@test -n "$(REGISTRY)" || { echo "usage: make plugin-push REGISTRY=host:port" >&2; exit 2; }
	@bash scripts/plugin-build.sh rootfs
	@bash scripts/plugin-push.sh "$(REGISTRY)"

# Benchmarks: secnet against Docker's bridge driver and a bare veth pair (~15 min);
# writes bench/results/<date>.{md,json,png}. BENCH_ARGS=--quick for a small run.
bench: venv image
	@bash scripts/bench.sh $(BENCH_ARGS)

# DNS-name rules: how long an answer is held for its rule (p50/p99), with 10,000
# addresses learned; namespaces only, no engine (bench/dns_hold.py).
bench-dns: venv
	$(PY) -m bench.dns_hold --count 500 --fill 10000
