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

.PHONY: help setup system-deps tools demo test lint typecheck proto proto-check pytest bench chaos clean

help:
	@echo "make demo   - simulator + driver: one volume through its whole life (root for real devices)"
	@echo "make test   - lint, types, stub drift check, every test including csi-sanity"
	@echo "make chaos  - volume lifecycles under 20% 503s and 100 plugin kills"
	@echo "make bench  - performance ratios against the physical limits"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) system-deps tools

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for t in mkfs.ext4 mkfs.xfs blkid losetup mount resize2fs xfs_growfs; do \
	    command -v $$t >/dev/null || missing="$$missing $$t"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing node tools (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_TOOLS) >/dev/null; \
	  fi; \
	else \
	  echo "not root (or no apt-get): node tools not installed; root-only tests will be skipped"; \
	fi

tools: $(CSI_SANITY)

$(CSI_SANITY):
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

pytest: setup
	CSI_SANITY=$(CSI_SANITY) CSI_OXIDE_REQUIRE_SANITY=1 $(VENV)/bin/pytest

test: setup lint typecheck proto-check pytest

demo: setup
	$(VENV)/bin/csi-oxide demo

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache build dist

bench: setup
	$(PY) scripts/bench.py

chaos: setup
	$(PY) scripts/chaos.py --volumes 12 --kills 100 --fail-rate 0.2 --lost-rate 0.05
