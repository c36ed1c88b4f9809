# csi-oxide: `make demo` and `make test` do all their own set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TOOLS := $(CURDIR)/.tools/bin
CSI_SANITY := $(TOOLS)/csi-sanity
CSI_SANITY_MODULE := github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity
# Debian packages the node needs (mkfs, blkid, mount, resize); installed when running as root.
NODE_TOOLS := util-linux e2fsprogs xfsprogs mount
# What the guest rack (tests/lab/guest, `demo --guest`) boots: qemu (TCG), the Debian kernel, and the
# static busybox virtme-ng builds its initramfs with; installed when running as root.
GUEST_DEBS := qemu-system-x86 linux-image-amd64 busybox-static
# What the Kubernetes test (tests/e2e) runs or builds images with, from Debian.
CLUSTER_DEBS := etcd-server containerd runc containernetworking-plugins podman debootstrap \
  busybox-static openssl iproute2
# Debian packages a target adds to system-deps (as root): make bench's reference reader, fio.
EXTRA_DEBS :=
bench: EXTRA_DEBS := fio

.PHONY: help setup system-deps node-deps test-deps tools demo test lint typecheck proto proto-check pytest bench chaos node-chaos clean guest \
  cluster-deps cluster-tools e2e e2e-if-root conformance helm

help:
	@echo "make demo   - simulator + driver: one volume through its whole life (root for real devices)"
	@echo "make test   - lint, types, stub drift check, every test including csi-sanity and,"
	@echo "              as root, the two-node Kubernetes test (make e2e)"
	@echo "make chaos  - volume lifecycles under 20% 503s and 100 plugin kills (+ node-chaos)"
	@echo "make node-chaos - 300 kill -9 of the node plugin inside its RPCs and mkfs"
	@echo "make bench  - performance ratios against the physical limits"
	@echo "make guest  - the node plugin in a qemu guest with NVMe hot-plug (root; minutes)"
	@echo "make e2e    - the driver in a two-node Kubernetes built here (root; first run builds it)"
	@echo "make conformance - Kubernetes' external-storage e2e suite against the driver (root)"

# Said in one line, before anything is made: what is missing and what to do.
NEED_PYTHON = $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || { echo "csi-oxide needs Python 3.11 or newer, and '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing): install it, or run make PYTHON=/path/to/python3.11"; exit 1; }; \
  $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
  || { echo "'$(PYTHON)' cannot make a virtual environment: install python3-venv (apt-get install python3-venv)"; exit 1; }
NEED_GO = command -v go >/dev/null \
  || { echo "make test builds csi-sanity (and helm) with Go, which is not installed: install Go (https://go.dev/dl, or apt-get install golang-go) and run it again; make demo does not need Go"; exit 1; }

$(STAMP): pyproject.toml
	@$(NEED_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make test's whole set-up; make demo needs only the venv and (as root) node-deps.
setup: $(STAMP) system-deps tools

system-deps: node-deps test-deps

# The programs the node plugin runs: the demo formats, mounts and grows real volumes with them.
node-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for t in mkfs.ext4 mkfs.xfs blkid losetup mount resize2fs xfs_growfs; do \
	    command -v $$t >/dev/null || missing="$$missing $$t"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing with apt-get: $(NODE_TOOLS) (missing:$$missing), the node plugin's filesystem tools"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_TOOLS) >/dev/null; \
	  fi; \
	else \
	  echo "not root (or no apt-get): no system packages installed; the demo shows the controller's part and root-only tests skip"; \
	fi

# What only tests boot or run: the guest rack's qemu, Debian kernel (into /boot) and busybox, and
# a target's EXTRA_DEBS.
test-deps:
	@if [ -n "$(EXTRA_DEBS)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	   && ! dpkg -s $(EXTRA_DEBS) >/dev/null 2>&1; then \
	  echo "installing $(EXTRA_DEBS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(EXTRA_DEBS) >/dev/null; \
	fi
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  if ! command -v qemu-system-x86_64 >/dev/null || ! ls /boot/vmlinuz-* >/dev/null 2>&1 \
	     || ! command -v busybox >/dev/null; then \
	    echo "installing with apt-get: $(GUEST_DEBS), for the guest rack's tests (qemu, and a Debian kernel into /boot)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GUEST_DEBS) >/dev/null; \
	  fi; \
	fi

tools: $(CSI_SANITY) helm

# helm, built from its Go module into .tools/cluster (cached by version), for tests/deploy/test_helm.py.
helm:
	$(PYTHON) scripts/cluster/build_tools.py --only helm --jobs 2

$(CSI_SANITY):
	@$(NEED_GO)
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install $(CSI_SANITY_MODULE)@v5.5.0 || GOBIN=$(TOOLS) go install $(CSI_SANITY_MODULE)@v5.4.0

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

proto-check: $(STAMP)
	$(PY) scripts/gen_proto.py --check

# In CI (CI set, as CI systems set it), a test that would skip for want of root, loop devices, a
# tool or csi-sanity fails instead: a CI that silently lost a test must not pass (tests/skips.py).
pytest: setup
	CSI_SANITY=$(CSI_SANITY) CSI_OXIDE_GUEST=1 $(VENV)/bin/pytest

# Only the guest rack: the node plugin in a qemu guest, NVMe hot-plug, csi-sanity in the guest.
guest: setup
	CSI_SANITY=$(CSI_SANITY) CSI_OXIDE_GUEST=1 $(VENV)/bin/pytest -s -p no:randomly tests/lab/guest

test: setup lint typecheck proto-check pytest e2e-if-root

# As root (CI), `make test` ends with the two-node Kubernetes test; otherwise it says why not.
e2e-if-root:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory e2e; \
	else echo "not root: the two-node Kubernetes test (make e2e) is skipped"; fi

# The two-node Kubernetes test: Debian packages (root), then the Kubernetes and sidecar binaries
# built from their Go modules into .tools/cluster (cached by version), then the scenarios.
cluster-deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make e2e needs root"; exit 1; fi
	@missing=""; \
	for t in etcd containerd runc podman debootstrap busybox openssl ip; do \
	  command -v $$t >/dev/null || missing="$$missing $$t"; \
	done; \
	[ -e /usr/lib/cni/loopback ] || missing="$$missing cni-loopback"; \
	if [ -n "$$missing" ]; then \
	  echo "installing cluster packages (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CLUSTER_DEBS) >/dev/null; \
	fi

cluster-tools: $(STAMP)
	$(PY) scripts/cluster/build_tools.py --jobs 2

e2e: setup cluster-deps cluster-tools
	CSI_OXIDE_E2E=1 $(VENV)/bin/pytest -s -p no:randomly -p no:cacheprovider tests/e2e

# Kubernetes' own external-storage e2e suite (e2e.test v1.34.4, built with agnhost and ginkgo into
# .tools/cluster) against the driver on the two-node cluster, in parallel ginkgo processes;
# tests/e2e/conformance.py holds the focus and the skips with their reasons. Exits non-zero on any
# failure in the claimed patterns.
conformance: setup cluster-deps cluster-tools
	$(PY) -m tests.e2e.conformance
	# Now that e2e.test and the sidecars are built: the skip list checked against the suite's real
	# spec list, and the chart's sidecar flags against the sidecars' own --help.
	$(VENV)/bin/pytest -q -p no:randomly -p no:cacheprovider tests/e2e/test_conformance.py \
	  tests/deploy/test_helm.py::test_the_controller_sidecars_know_every_flag_the_chart_gives_them

# Only what the demo uses: no Go, no csi-sanity, no helm, no qemu.
demo: $(STAMP) node-deps
	$(VENV)/bin/csi-oxide demo

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache build dist

bench: setup
	$(PY) scripts/bench.py

chaos: setup node-chaos
	$(PY) scripts/chaos.py --volumes 12 --kills 100 --fail-rate 0.2 --lost-rate 0.05

node-chaos: setup
	$(PY) scripts/node_chaos.py --kills 300
