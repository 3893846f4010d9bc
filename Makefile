# weave-router: the README's commands. Every target sets up what it needs first.
#   make demo    three hosts in network namespaces form a mesh; containers ping and iperf3 across it
#   make test    lint + every test layer (unit, wire, sim, fastpath, integration)
#   make bench   data-plane benchmarks, ratios to kernel baselines, then bench-ipam (bench/results/)
#   make bench-ipam  IPAM allocations/s through the HTTP API and 3-peer consensus time
#   make bench-api   /status latency of the control API while 200 slow clients hold connections
#   make bench-scale  the mesh control plane at N = 100, 300, 1000 peers in the simulation
#   make bench-cni   CNI ADD/DEL p50/p99 over 100 pods, weave-net against bridge + host-local
#   make bench-dns   weaveDNS vs dnsmasq (dnsperf): qps ratio, p99 at 10,000 qps, RSS with 10,000 names
#   make bench-processes  20 real routers in namespaces form a full mesh: each one's RSS and idle CPU
#   make lint    ruff + mypy --strict on router/ and cli/
#   make image   the container image (Containerfile) from a debootstrap'd Debian base

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libsodium-dev libssl-dev pkg-config iproute2 iperf3 tcpdump ethtool procps iputils-ping \
  golang-go containernetworking-plugins podman runc debootstrap containerd busybox-static \
  golang-github-appc-cni-dev dnsutils dnsmasq-base dnsperf prometheus nftables systemd conntrack
PYTEST_ARGS ?=
BENCH_ARGS ?=
# bench-ipam's own flags; `make bench BENCH_ARGS=--quick` makes it quick too
BENCH_IPAM_ARGS ?= $(filter --quick,$(BENCH_ARGS))
BENCH_API_ARGS ?= $(filter --quick,$(BENCH_ARGS))
# e.g. BENCH_SCALE_ARGS="--sizes 50,100" (bench/scale.py)
BENCH_SCALE_ARGS ?=

.PHONY: setup apt venv build cni demo test test-fast lint bench bench-ipam bench-api bench-scale \
  bench-cni bench-dns bench-processes image clean

setup: .stamp-apt .stamp-venv build cni

# Debian packages: only installed when one is missing, so repeated runs are quick.
.stamp-apt: Makefile
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

.stamp-venv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel 'Cython>=3.0,<4'
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	@touch $@

# The compiled data plane and CBOR scan, rebuilt in place whenever a Cython source changes.
build: .stamp-venv $(wildcard _fastpath/*.pyx _fastpath/*.pxi _fastpath/*.pxd _fastpath/*.h _wire/*.pyx) setup.py
	@if ls _fastpath/*.pyx >/dev/null 2>&1; then \
	  $(PY) setup.py -q build_ext --inplace >/dev/null; fi

# The CNI plugin (docs/cni.md): a static Go executable, standard library only, built
# offline (no modules fetched); weave-ipam is the same program under its IPAM name.
CNI_GO := cd cni && GOCACHE=$(CURDIR)/build/go-cache GOPATH=$(CURDIR)/build/gopath \
  GOTOOLCHAIN=local GOPROXY=off GOFLAGS= CGO_ENABLED=0 go
cni: build/cni/weave-net
build/cni/weave-net: .stamp-apt $(wildcard cni/*.go) cni/go.mod
	@mkdir -p build/cni
	$(CNI_GO) vet .
	$(CNI_GO) build -trimpath -ldflags=-s -o $(CURDIR)/build/cni/weave-net .
	ln -sf weave-net build/cni/weave-ipam

# The container image (docs/install.md): base rootfs by debootstrap (once), imported into
# podman, the Python wheels downloaded here (pip runs offline in the build), then the build.
IMAGE ?= localhost/weave-router:latest
IMAGE_BASE := localhost/weave-router-base:bookworm
PODMAN := CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/image/containers.conf} podman
image: .stamp-apt .stamp-venv
	@test -f build/images/base.tar || { mkdir -p build/images && image/base.sh build/images/base.tar; }
	@$(PODMAN) image exists $(IMAGE_BASE) || $(PODMAN) import build/images/base.tar $(IMAGE_BASE)
	$(PY) image/wheelhouse.py build/wheelhouse
	$(PODMAN) build --network host --pull=never --build-arg BASE=$(IMAGE_BASE) -t $(IMAGE) .

demo: setup
	$(PY) -m tests.demo

lint: setup
	$(VENV)/bin/ruff check router cli tests bench
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

# bench-ipam and bench-api run even when an earlier part fails (not when it was
# interrupted: 130); make's status is the first failure's.
bench: setup
	@$(PY) -m bench.run $(BENCH_ARGS); status=$$?; \
	if [ $$status -eq 130 ]; then exit 130; fi; \
	echo; $(PY) -m bench.ipam $(BENCH_IPAM_ARGS); ipam=$$?; \
	if [ $$ipam -eq 130 ]; then exit 130; fi; \
	echo; $(PY) -m bench.api_soak $(BENCH_API_ARGS); api=$$?; \
	exit $$(( status ? status : ipam ? ipam : api ))

bench-ipam: setup
	$(PY) -m bench.ipam $(BENCH_IPAM_ARGS)

bench-api: setup
	$(PY) -m bench.api_soak $(BENCH_API_ARGS)

bench-scale: setup
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

bench-cni: setup
	$(PY) -m bench.cni $(BENCH_CNI_ARGS)

bench-dns: setup
	$(PY) -m bench.dns

bench-processes: setup
	$(PY) -m bench.processes $(BENCH_PROCESSES_ARGS)

clean:
	rm -rf $(VENV) build .stamp-* router/*.so router/wire/*.so _fastpath/*.c _fastpath/*.html _wire/*.c
