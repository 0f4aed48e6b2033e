# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS := requirements/dev-constraints.txt
BIN := $(VENV)/bin
DEMO_DIR ?= demo-output

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
	$(BIN)/masklet synth $(DEMO_DIR)/corpus --videos 8 --per-shard 4 --seed 0
	@echo "The sample corpus is in $(DEMO_DIR)/corpus."
	@echo "The auto-labelling job (masklet run) is not built yet, so the demo stops after the corpus."

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
