# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS := requirements/dev-constraints.txt
BIN := $(VENV)/bin

.PHONY: demo demo-model engine-loop test lint install dev-install review-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev-install: $(VENV)/.installed-dev

lint: dev-install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

# The reference tools the review tests check masklet's files with (datumaro; a Label Studio server and SDK),
# each in a venv of its own under ~/.cache/masklet/tools (tests/review_tools.py; the tests make them on first
# use too). About 5 minutes the first time on a 2-core machine, then nothing.
review-tools: dev-install
	$(BIN)/python tests/review_tools.py

demo: install
	$(BIN)/masklet synth demo-output/corpus --videos 8 --per-shard 4 --seed 0
	$(BIN)/masklet run configs/demo.yaml
	@echo "Corpus: demo-output/corpus   masklets: demo-output/masklets (see docs/output-schema.md)"
	@echo "Model: masklet_demo, trained on synthetic videos only (docs/demo-model.md). For real videos use"
	@echo "official weights: $(BIN)/masklet run configs/demo.yaml model.name=sam2.1_hiera_t model.checkpoint=URI \\"
	@echo "  pipeline.pred_iou_thresh=0.8 pipeline.stability_score_thresh=0.95"
	@echo "Report (stats, plots, overlays; open it in a browser):"
	$(BIN)/masklet report demo-output/masklets

# Reproduces the shipped masklet/weights/masklet_demo.pt (about 2 h 40 min on a 2-core CPU; docs/demo-model.md).
demo-model: install
	$(BIN)/masklet synth demo-output/train-corpus --videos 120 --per-shard 20 --seed 100
	$(BIN)/masklet train configs/train-demo-stage1.yaml
	$(BIN)/masklet train configs/train-demo.yaml
	$(BIN)/masklet train configs/train-demo-stage3.yaml
	cp demo-output/train-demo-stage3/model.pt masklet/weights/masklet_demo.pt

# The data-engine loop: auto-label, sample, fine-tune round 1, evaluate (docs/data-engine.md).
engine-loop: install
	$(BIN)/python benchmarks/data_engine_loop.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
