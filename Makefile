# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS := requirements/dev-constraints.txt
BIN := $(VENV)/bin

.PHONY: demo test lint install dev-install clean

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

demo: install
	$(BIN)/masklet synth demo-output/corpus --videos 8 --per-shard 4 --seed 0
	$(BIN)/masklet run configs/demo.yaml
	@echo "Corpus: demo-output/corpus   masklets: demo-output/masklets (see docs/output-schema.md)"
	@echo "No trained weights ship with masklet yet: the demo model has seeded random weights and finds few"
	@echo "or no objects. For real masklets: $(BIN)/masklet run configs/demo.yaml model.checkpoint=PATH_OR_URI"
	@echo "Report (stats, plots, overlays; open it in a browser):"
	$(BIN)/masklet report demo-output/masklets

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
