# twins-np: the two commands are `make demo` and `make test` (see README.md).
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
PYTEST_ARGS ?=
# The tests run in JOBS processes with one BLAS/OpenMP thread each: on a 2-core machine two
# worker processes with two BLAS threads each make OpenBLAS's threads wait for each other
# (a 0.6 ms matrix product took 200 ms that way).
JOBS     ?= 2
TEST_ENV := OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TQDM_DISABLE=1
# pip install -e, without one message of setuptools (its InformationOnly "Editable installation."
# banner, printed as a warning on every editable install: folders named like the package may
# shadow it). Only that message is filtered, by its first words; every other warning and error shows.
PIP_EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e
# The Jupyter kernels that run the notebooks (nbmake, the docs) log at ERROR: ipykernel 7 warns
# at every kernel start that its channels are TCP without encryption (they are local, on
# loopback, and every message is HMAC-signed), a line that reads like an error. The setting
# lives in an IPython profile under build/, used by these runs only (not by `make lab`).
KERNEL_PROFILE := build/ipython/profile_default/ipython_kernel_config.py
KERNEL_ENV := IPYTHONDIR=$(CURDIR)/build/ipython

.PHONY: demo demo-segment course student pythons test lint typecheck pytest pytest-nokernels pytest-standin gpu-check notebooks lab bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# runtime install (numpy, scipy, matplotlib, tqdm, scikit-learn for the digits data) with the
# `fast` extra: numba, which compiles the fused CPU kernels
$(VENV)/.stamp-run: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_EDITABLE) ".[fast]"
	touch $@

# dev + notebook extras: pytest, hypothesis, ruff, mypy, torch/timm parity oracle, nbmake
$(VENV)/.stamp-dev: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_EDITABLE) ".[dev,notebooks,docs,course,student]"
	touch $@ $(VENV)/.stamp-run $(VENV)/.stamp-docs $(VENV)/.stamp-course $(VENV)/.stamp-student

# the instructor's course tools: `twins-np assignment build` needs pytest and jupytext
# (docs/instructors.md); grading and the Gradescope zip need nothing more than `make demo`'s install
$(VENV)/.stamp-course: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_EDITABLE) ".[course]"
	touch $@ $(VENV)/.stamp-run

course: $(VENV)/.stamp-course
	@echo "course tools installed: $(BIN)/twins-np assignment build OUT_DIR (docs/instructors.md)"

# a student's set-up, in a student copy: pytest, JupyterLab and a kernel; no PyTorch (STUDENT.md)
$(VENV)/.stamp-student: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_EDITABLE) ".[student]"
	touch $@ $(VENV)/.stamp-run

student: $(VENV)/.stamp-student
	@echo "ready: $(BIN)/python -m pytest -m TASK, $(BIN)/twins-np assignment status, $(BIN)/jupyter lab notebooks/"

# the main job: gradient check of every layer, then train the SVT teaching config on the
# digits and report its test accuracy; figures go to outputs/
demo: $(VENV)/.stamp-run
	$(BIN)/twins-np demo --out outputs

# the dense counterpart: train the teaching segmenter (twins_svt_teach64_fpn) on the synthetic
# shapes set and report its test mIoU; figures go to outputs/segment/
demo-segment: $(VENV)/.stamp-run
	$(BIN)/twins-np demo --task segment --out outputs/segment

# ruff, then the layering contracts of setup.cfg (import-linter: docs/architecture.md)
lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check twins_np tests tools $(wildcard benchmarks)
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy twins_np

# every test and every notebook, executed top to bottom (nbmake: one test per notebook).
# The notebooks run from copies in build/notebooks, which keep their outputs for the docs.
$(KERNEL_PROFILE):
	mkdir -p $(dir $@) && echo 'c.IPKernelApp.log_level = "ERROR"' > $@

pytest: $(VENV)/.stamp-dev $(KERNEL_PROFILE)
	rm -rf build/notebooks && mkdir -p build/notebooks && cp notebooks/[0-9]*.ipynb build/notebooks/
	$(TEST_ENV) $(KERNEL_ENV) $(BIN)/python -m pytest tests build/notebooks --nbmake --overwrite --nbmake-timeout=900 -n $(JOBS) $(PYTEST_ARGS)

# the notebooks, opened in JupyterLab (installs the notebooks extra: jupyter, ipykernel, jupytext)
$(VENV)/.stamp-lab: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_EDITABLE) ".[notebooks]"
	touch $@ $(VENV)/.stamp-run

lab: $(VENV)/.stamp-lab
	$(BIN)/jupyter lab notebooks/

# the core suite a second time with the fused CPU kernels switched off, so the NumPy twins
# (the reference, and what runs without numba) stay tested on their own
pytest-nokernels: $(VENV)/.stamp-dev
	TWINS_NP_CPU_KERNELS=0 $(TEST_ENV) $(BIN)/python -m pytest tests/functional tests/nn tests/models -m "not slow" -n $(JOBS) $(PYTEST_ARGS)

# the gpu-marked tests a second time, on the strict NumPy-backed CuPy stand-in
# (tests/cupy_standin.py): device arrays that refuse implicit host conversion and mixing.
# It proves which arrays live where and which CuPy APIs are called, not GPU numerics or
# speed; on a machine with a real GPU the real CuPy is used instead.
pytest-standin: $(VENV)/.stamp-dev
	$(TEST_ENV) $(BIN)/python -m pytest tests -m gpu --cupy-standin -n $(JOBS) $(PYTEST_ARGS)

# regenerate notebooks/*.ipynb (no outputs) from the jupytext sources notebooks/*.py
notebooks: $(VENV)/.stamp-dev
	$(BIN)/python tools/sync_notebooks.py

# the short suite (tests/test_pythons.py: import, a few gradient checks, build and grade two
# tasks) under the lowest and the highest supported Python found here (PATH or pyenv), each in a
# virtualenv of its own under build/pythons/ with the course extra only; kept between runs
pythons:
	PYTHON=$(PY) bash tools/short_suite.sh

test: lint typecheck pytest pytest-nokernels pytest-standin pythons docs

# The site, with warnings as errors. MathJax 3 is fetched once from the npm registry into
# docs/_static/mathjax so the built pages render math offline.
MATHJAX_VERSION := 3.2.2
docs/_static/mathjax/tex-svg.js:
	rm -rf build/mathjax && mkdir -p build/mathjax docs/_static/mathjax
	cd build/mathjax && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz package/es5/tex-svg.js
	cp build/mathjax/package/es5/tex-svg.js $@

# twins-np with the docs extra only (Sphinx, MyST-NB, the theme): no PyTorch, no test tools
$(VENV)/.stamp-docs: $(BIN)/python setup.cfg pyproject.toml
	$(PIP_EDITABLE) ".[docs]"
	touch $@ $(VENV)/.stamp-run

# Each notebook page comes executed from build/notebooks (what `make pytest` just ran), else
# from notebooks/rendered (the committed executed copies of 01-08, checked against their
# sources by the tests), else it is the bare notebook and Sphinx executes it.
docs: $(VENV)/.stamp-docs docs/_static/mathjax/tex-svg.js $(KERNEL_PROFILE)
	mkdir -p docs/notebooks
	executed=""; for nb in notebooks/[0-9]*.ipynb; do \
		[ -e "$$nb" ] || continue; b=$$(basename $$nb); \
		if [ -f build/notebooks/$$b ]; then cp build/notebooks/$$b docs/notebooks/; executed="$$executed $$b"; \
		elif [ -f notebooks/rendered/$$b ]; then cp notebooks/rendered/$$b docs/notebooks/; executed="$$executed $$b"; \
		else cp $$nb docs/notebooks/; fi; \
	done; \
	TQDM_DISABLE=1 $(KERNEL_ENV) TWINS_NP_NOTEBOOKS_EXECUTED="$$executed" $(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

# The prepared check for a machine with a real GPU (no venv there: system python3 with cupy,
# torch + timm, pytest): device and versions, pytest -m gpu, float64 parity with timm on
# CUDA, every notebook with TWINS_NP_DEVICE=gpu, one epoch of training, the GPU benchmark;
# at most 8 minutes; writes OUT/report.md and OUT/benchmark-gpu.json.
OUT ?= build/gpu-check
gpu-check:
	PYTHON=$(PY) bash tools/gpu_check.sh $(OUT)

bench: $(VENV)/.stamp-dev
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache outputs docs/_build docs/notebooks/*.ipynb docs/_static/mathjax
