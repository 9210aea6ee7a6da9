# Every target creates .venv on first use and installs the pinned dependencies (torch: the CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench lint clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and alone, pinned to the CPU build on disk, so nothing later resolves a CUDA torch
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fsad demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.ray_bench
	$(BIN)/python -m benchmarks.tune_bench
	$(BIN)/python -m benchmarks.run --ablation-categories juice_bottle,tire

lint: $(STAMP)
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo_out bench_out
