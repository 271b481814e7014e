# dglbench — `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: help install demo test test-fast lint bench bench-gpu lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install dglbench with its test tools (once)

demo: $(STAMP)  ## run the main job on embedded data (experiment 1: I2F vs attack error)
	$(BIN)/dglbench demo

test: $(STAMP)  ## run the whole test suite and the docstring examples (offline, CPU)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests

test-fast: $(STAMP)  ## the suite without tests marked slow (the full zoo matrix)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" tests

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check benchmark models datamodules tests
	$(BIN)/ruff format --check benchmark models datamodules tests

bench: $(STAMP)  ## run the benchmarks and write BENCHMARKS.md
	$(BIN)/python -m dglbench.bench

bench-gpu: $(STAMP)  ## on a machine with a GPU: the GPU rows of BENCHMARKS.md (about 5 minutes; CPU: add ARGS=--quick)
	$(BIN)/python -m dglbench.bench_gpu $(ARGS)

lock: $(STAMP)  ## write constraints.txt: the exact versions of a reproducible benchmark run
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
