# Developer entry points. Everything runs from the repository's virtualenv (.venv).
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV        := .venv
VENV_BIN    := $(VENV)/bin
STAMP       := $(VENV)/.installed
PYTHON      ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
ARGS        ?=
PYTEST_ARGS ?= -q -ra

.PHONY: venv serve test-deps test lint bench test-gc-soak soak fuzz

# Create the virtualenv once; (re)install the project only when pyproject.toml
# is newer than the stamp file.
venv: $(STAMP)

$(VENV_BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_BIN)/python
	$(VENV_BIN)/pip install -e '.[dev,uvloop,s3,gcs,azure,cloud-test]'
	touch $@

# Run the reference server (defaults: 127.0.0.1:5000, ./var/registry).
serve: venv
	$(VENV_BIN)/cargohold serve $(ARGS)

# Debian packages the integration tests drive (skopeo, podman, containerd, ...).
test-deps:
	bash scripts/install-test-deps.sh

test: test-deps venv
	$(VENV_BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV_BIN)/ruff check . && $(VENV_BIN)/ruff format --check .

bench: venv
	$(VENV_BIN)/python -m benchmarks.run $(ARGS)

# GC's concurrency proof, longer than CI's 60 s: 16 clients per backend (local, moto S3).
GC_SOAK_SECONDS ?= 180
test-gc-soak: test-deps venv
	CARGOHOLD_GC_SOAK_SECONDS=$(GC_SOAK_SECONDS) $(VENV_BIN)/pytest -q -ra -s -p no:cacheprovider \
		-o timeout=1800 tests/test_lifecycle_gc_concurrency.py

# Soak: mixed load on two workers, 10 minutes on a local folder and 3 on moto's S3, then
# kill -9 under load (CI's default run does 60 s + 30 s). SOAK_SECONDS / SOAK_S3_SECONDS.
SOAK_SECONDS    ?= 600
SOAK_S3_SECONDS ?= 180
soak: test-deps venv
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_S3_SECONDS=$(SOAK_S3_SECONDS) \
		$(VENV_BIN)/pytest -q -ra -s -p no:cacheprovider -m soak -o timeout=1800 tests/test_soak.py

# Fuzz: the property-based suite (tests/test_fuzz_*.py) in its long profile, round after
# round with fresh randomness, until FUZZ_SECONDS have passed (a round started before the
# deadline runs to its end). FUZZ_EXAMPLES / FUZZ_OPENAPI_EXAMPLES size one round.
FUZZ_SECONDS          ?= 600
FUZZ_EXAMPLES         ?= 300
FUZZ_OPENAPI_EXAMPLES ?= 40
fuzz: venv
	@end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
		round=$$((round + 1)); echo "== fuzz round $$round ($$(( end - $$(date +%s) ))s left)"; \
		FUZZ_PROFILE=long FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_OPENAPI_EXAMPLES=$(FUZZ_OPENAPI_EXAMPLES) \
			$(VENV_BIN)/pytest -q -x -p no:cacheprovider -o timeout=3600 tests/test_fuzz_*.py \
			|| exit 1; \
	done; echo "fuzz: $$round rounds, no failure"
