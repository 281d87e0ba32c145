# make demo : create .venv (Python 3.12), install megatron-s1, run the tiny CPT recipe end to end.
# make test : the CPU test suite (what CI runs).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/megatron-s1
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
RECIPE := examples/cpt/tiny_cpu.yaml

.PHONY: venv demo test test-gpu clean-demo

$(STAMP): setup.py pyproject.toml
	@set -eo pipefail; py=$$(tools/find_python.sh); echo "using $$py"; \
	  [ -x $(PY) ] || $$py -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }; \
	  echo "installing megatron-s1 and its dependencies into $(VENV) (torch is large: a few minutes the first time)"; \
	  $(PY) -m pip install -q -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $(STAMP)

venv: $(STAMP)

# Bundled corpus -> preprocess -> train 10 steps (checkpoint) -> resume to 20 -> eval.
demo: $(STAMP)
	@set -e; rm -rf $(DEMO_DIR); \
	echo "== 1/4 preprocess the bundled corpus"; \
	$(CLI) preprocess --input megatron_s1/data/corpus/tiny_corpus.jsonl --output-prefix $(DEMO_DIR)/data/corpus --quiet; \
	echo "== 2/4 train (stops after step 10, as if preempted)"; \
	$(CLI) train --config $(RECIPE) run.dir=$(DEMO_DIR) data.blend=[$(DEMO_DIR)/data/corpus] train.exit_at_step=10; \
	echo "== 3/4 resume from the step-10 checkpoint to step 20"; \
	$(CLI) train --config $(RECIPE) run.dir=$(DEMO_DIR) data.blend=[$(DEMO_DIR)/data/corpus]; \
	echo "== 4/4 evaluate the final checkpoint"; \
	$(CLI) eval --config $(RECIPE) run.dir=$(DEMO_DIR) data.blend=[$(DEMO_DIR)/data/corpus]; \
	echo "demo done: metrics in $(DEMO_DIR)/metrics.jsonl, tensorboard in $(DEMO_DIR)/tensorboard"

test: $(STAMP)
	$(PY) -m pytest -q tests

test-gpu: $(STAMP)
	$(PY) -m pytest -q tests/gpu
