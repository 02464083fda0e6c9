# twins-np: the two commands are `make demo` and `make test` (see README.md).
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest notebooks bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# runtime install (numpy, scipy, matplotlib, tqdm, scikit-learn for the digits data)
$(VENV)/.stamp-run: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# dev + notebook extras: pytest, hypothesis, ruff, mypy, torch/timm parity oracle, nbmake
$(VENV)/.stamp-dev: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e ".[dev,notebooks]"
	touch $@ $(VENV)/.stamp-run

demo: $(VENV)/.stamp-run
	$(BIN)/twins-np gradcheck
	@if $(BIN)/twins-np train --help >/dev/null 2>&1; then \
		$(BIN)/twins-np demo --out outputs; fi

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check twins_np tests tools $(wildcard benchmarks)

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy twins_np

# every test, then every notebook executed top to bottom (nbmake: one test per notebook)
pytest: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest tests notebooks --nbmake --nbmake-timeout=900 $(PYTEST_ARGS)

# regenerate notebooks/*.ipynb (no outputs) from the jupytext sources notebooks/*.py
notebooks: $(VENV)/.stamp-dev
	$(BIN)/python tools/sync_notebooks.py

test: lint typecheck pytest

bench: $(VENV)/.stamp-dev
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache outputs
