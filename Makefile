PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LISTEN ?= 127.0.0.1:8080

.PHONY: run test testbed bench lint venv docs sync-crds images

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/sluice run --listen $(LISTEN) --data-dir ./.sluice/data --out-dir ./.sluice/out $(ARGS)

testbed:
	$(PYTHON) tests/support/provision.py

test: $(STAMP) testbed
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP) testbed
	$(BIN)/python -m bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# The chart carries a byte-identical copy of the top-level CRDs (tests/chart checks it).
CHART := charts/sluice-operator
sync-crds:
	mkdir -p $(CHART)/crds
	rm -f $(CHART)/crds/*.yaml
	cp crds/*.yaml $(CHART)/crds/

# Builds both images with docker, or podman if there is no docker. VERSION tags them.
IMAGE_REPO ?= ghcr.io/sluice-dev
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
images:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
	  echo "make images: neither docker nor podman is installed; install one (or set CONTAINER_ENGINE)." >&2; \
	  exit 1; \
	fi; \
	if ! $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
	  echo "make images: $(CONTAINER_ENGINE) is installed but cannot reach its engine (is the daemon running?)." >&2; \
	  exit 1; \
	fi
	$(CONTAINER_ENGINE) build -f Dockerfile.operator --build-arg VERSION=$(VERSION) \
	  -t $(IMAGE_REPO)/sluice-operator:$(VERSION) .
	$(CONTAINER_ENGINE) build -f Dockerfile.runtime --build-arg VERSION=$(VERSION) \
	  -t $(IMAGE_REPO)/sluice-runtime:$(VERSION) .

docs: $(STAMP)
	$(BIN)/python -m tools.reference --write
