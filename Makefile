# recattend: `make train` and `make test` set everything up themselves (a .venv beside this file).
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first. The default is the CPU wheel this project is developed on; on a
# GPU machine pick yours, e.g. make install TORCH_SPEC="torch==2.5.1 --index-url <your CUDA index>".
TORCH_SPEC ?= torch==2.13.0
# Extra Hydra overrides for `make train`, e.g. make train ARGS="trainer.max_epochs=1".
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo train test test-fast bench bench-gpu learning-speed gallery rosette-stats check-data lint clean clean-outputs FORCE

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Rewritten only when TORCH_SPEC changes, so a new spec triggers a reinstall and nothing else does.
$(VENV)/.torch-spec: FORCE | $(BIN)/python
	@echo '$(TORCH_SPEC)' | cmp -s - $@ || echo '$(TORCH_SPEC)' > $@

$(STAMP): pyproject.toml $(VENV)/.torch-spec | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q $(TORCH_SPEC)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv and install recattend with its dev tools (skipped when up to date)

demo: $(STAMP) ## Segment a few rendered rosettes with the shipped weights: overlays and Figure 1
	$(BIN)/python -m recattend.tasks.demo $(ARGS)

train: $(STAMP) ## Train with the defaults (synthetic data); pass overrides with ARGS="..."
	RECATTEND_LAUNCHER="make train" $(BIN)/python train.py $(ARGS)

test: $(STAMP) ## Run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP) ## Segmenter speed and memory benchmark -> outputs/bench/latest.json
	$(BIN)/python -m recattend.tasks.bench

bench-gpu: $(STAMP) ## The same on the GPU (images/s, peak GPU memory) -> outputs/bench/latest-cuda.json
	$(BIN)/python -m recattend.tasks.bench --device cuda

# The recipe whose learning curve `make learning-speed` measures (docs/learning-speed.md).
EXPERIMENT ?= synthetic_benchmark

learning-speed: $(STAMP) ## Train a recipe alone and write its curve: make learning-speed EXPERIMENT=leaves_few
	$(BIN)/python -m recattend.tasks.learning_speed $(EXPERIMENT) $(ARGS)

gallery: $(STAMP) ## Synthetic rosettes beside their labels -> outputs/gallery/rosettes.jpg (ARGS="--knob moss=1")
	$(BIN)/python -m recattend.tasks.gallery $(ARGS)

rosette-stats: $(STAMP) ## The rosettes' statistics beside real CVPPP A1 plants' (ARGS="--cvppp <A1 folder>")
	$(BIN)/python -m recattend.tasks.rosette_stats $(ARGS)

check-data: $(STAMP) ## Check a dataset folder: make check-data ARGS="dataset=cvppp dataset.root=..."
	$(BIN)/python -m recattend.data.check $(ARGS)

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check recattend tests train.py
	$(BIN)/ruff format --check recattend tests train.py

clean: ## Remove the venv and caches (keeps outputs/)
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-outputs: ## Remove everything runs wrote below outputs/
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
