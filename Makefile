# One entry point for developers, CI (.ci/run) and Cloud Build: the same commands everywhere.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: help venv run test test-faults test-image image podman lint typecheck checkov unit integration bench soak clean \
	pin-requirements pin-images

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Both files pin every distribution with its hashes (make pin-requirements), so pip checks each
# download; one install each, as pip's hash-checking takes a whole install at a time.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	@touch $@

venv: $(STAMP)  ## create .venv with the pinned requirements

run: venv  ## start the local stack and send a sample prediction through it (Ctrl-C stops)
	$(BIN)/relay dev --demo

lint: venv  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv  ## mypy --strict on the packages
	$(BIN)/mypy

# checkov's pins clash with the project's, so it has a virtualenv of its own (git-ignored inside).
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	@echo '*' > $(CHECKOV_VENV)/.gitignore
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	@touch $@

# Offline: no Prisma Cloud / Bridgecrew API (no key, --skip-download) and no PyPI version check.
checkov: $(CHECKOV_STAMP)  ## checkov on infra/terraform, offline; every skip has a written reason
	env -u BC_API_KEY CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE \
		$(CHECKOV_VENV)/bin/checkov -d infra/terraform --framework terraform --quiet --compact \
		--skip-download --download-external-modules false

# Offline from the committed index (infra/checks/google-provider.schema.json.gz); see that module's docstring.
.PHONY: check-terraform terraform-schema
check-terraform: venv  ## check infra/terraform against the google provider's schema, and terraform fmt
	$(BIN)/python -m infra.checks.terraform_schema check infra/terraform

terraform-schema: venv  ## regenerate that schema index from the pinned cdktf google bindings (49 MB download)
	$(BIN)/python -m infra.checks.terraform_schema index

# The published contracts (schemas/*.schema.json, docs/SCHEMAS.md) and the API's OpenAPI document
# (schemas/openapi.v1.json) from the models; tests/unit/test_schemas.py and test_api.py fail `make test`
# when they differ.
.PHONY: schemas
schemas: venv  ## regenerate schemas/ (the contracts, the API's OpenAPI document) and docs/SCHEMAS.md's tables from the models
	$(BIN)/python -m replicate_relay.schemas
	$(BIN)/python -m api.openapi

unit: venv  ## unit tests (nothing running needed)
	$(BIN)/python -m pytest tests/unit

integration: venv chromium node  ## integration tests against the emulators (started by the tests)
	$(BIN)/python -m pytest tests/integration

test: lint typecheck checkov check-terraform chromium node  ## lint, type checks, checkov and the whole suite (faults aside)
	$(BIN)/python -m pytest

test-faults: venv  ## the fault suite: kills and fails parts of a local stack of its own (~6 min)
	$(BIN)/python -m pytest tests/faults

# The image: docker where a daemon answers, else podman (installed here if missing, with runc and
# mmdebstrap for a base made from Debian's packages where no registry can be reached).
IMAGE ?= localhost/replicate-relay:local
image: venv podman  ## build the Dockerfile into $(IMAGE) (docker, else podman; cached)
	IMAGE=$(IMAGE) $(BIN)/python -m replicate_relay.devstack.containers build

# requirements.in and requirements-dev.in are what people edit; the .txt files are compiled from them with
# every distribution's sha256 (pip-tools, in a virtualenv of its own, git-ignored inside).
PIP_TOOLS_VENV := .venv-pip-tools
PIP_COMPILE = CUSTOM_COMPILE_COMMAND='make pin-requirements' $(PIP_TOOLS_VENV)/bin/pip-compile --quiet \
	--generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
pin-requirements:  ## requirements*.txt with hashes, from requirements*.in (pip-compile; reaches PyPI)
	$(PYTHON) -m venv $(PIP_TOOLS_VENV)
	@echo '*' > $(PIP_TOOLS_VENV)/.gitignore
	$(PIP_TOOLS_VENV)/bin/python -m pip install --quiet pip-tools==7.7.0
	$(PIP_COMPILE) --output-file requirements.txt requirements.in
	$(PIP_COMPILE) --output-file requirements-dev.txt requirements-dev.in

# The base and Cloud Build step images are pinned NAME:TAG@sha256:DIGEST; this re-resolves each tag.
pin-images: venv  ## re-resolve the Dockerfile's and cloudbuild*.yaml's image digests (crane, skopeo or docker buildx; online)
	$(BIN)/python -m replicate_relay.deploy.pins

test-image: image  ## run every Cloud Run service as a container of $(IMAGE) against the emulators (~3 min)
	RELAY_IMAGE=$(IMAGE) $(BIN)/python -m pytest tests/image

podman:  ## install podman, runc and mmdebstrap if no container engine is here
	@{ command -v docker >/dev/null && docker info >/dev/null 2>&1; } || \
	{ command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null; } || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap; }

# The status page's browser test runs Debian's Chromium headless; sudo only when not already root.
.PHONY: chromium
chromium:  ## install Debian's chromium if it is missing (for the status page test)
	@command -v chromium >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# examples/typescript needs Node 20+ and npm (its integration test runs `npm ci` itself); Debian's if missing.
.PHONY: node
node:  ## install Debian's nodejs and npm if node is missing (for examples/typescript's test)
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

# Benchmarks, not tests (make test runs none): each writes bench/results/NAME.json and its own section of
# docs/BENCHMARKS.md (plots in docs/bench/); bench/report.py then adds the machine and the fault runs.
# Archive streaming at 128 MiB (the 1 GiB run is `bench/archive.py` alone); end to end at 1/s × 60 and 5/s × 200.
# BENCH_FLAGS=--quick: a smoke run (the 1/s run keeps its 60 predictions; a --quick run meets no target).
BENCH_FLAGS ?=
bench: venv image  ## benchmarks, each writing its section of docs/BENCHMARKS.md and its plots in docs/bench/
	$(BIN)/python bench/webhook_load.py $(BENCH_FLAGS)
	$(BIN)/python bench/receiver_cpu.py $(BENCH_FLAGS)
	$(BIN)/python bench/archive.py --quick $(BENCH_FLAGS)
	$(BIN)/python bench/e2e.py --rate 1 --predictions 60 --results bench/results/e2e-1ps.json $(BENCH_FLAGS)
	$(BIN)/python bench/e2e.py $(BENCH_FLAGS)
	RELAY_IMAGE=$(IMAGE) $(BIN)/python bench/image.py $(BENCH_FLAGS)
	$(BIN)/python bench/api_load.py $(BENCH_FLAGS)
	$(BIN)/python bench/package.py $(BENCH_FLAGS)
	$(BIN)/python bench/report.py machine faults

# The soak: steady load through the whole stack with chaos and the reconciler on, RSS and fds of every
# process sampled from /proc; not in CI. SOAK_FLAGS='--minutes 3': a smoke run.
SOAK_FLAGS ?=
soak: venv  ## 30 min at 2 predictions/s: leaks (RSS, fds per process), latency per minute, 0 lost
	$(BIN)/python bench/e2e.py --soak $(SOAK_FLAGS)

clean:  ## remove the virtualenv, caches and local logs
	rm -rf $(VENV) $(CHECKOV_VENV) $(PIP_TOOLS_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .relay
