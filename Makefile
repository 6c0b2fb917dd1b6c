# Two commands do everything on a fresh clone:
#   make run    create .venv if missing, install the tested versions, run the main job (writes to runs/)
#   make test   same bootstrap, then every test and every notebook (nbmake)
# and `make lab` opens JupyterLab on notebooks/. `make unit` is the fast tier (under 90 s).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements-lock.txt
RUN_DIR ?= runs/laptop-$(shell date +%Y%m%d-%H%M%S)

# The test tiers (markers registered in pyproject.toml): `unit` runs what none of these marks.
SLOW_KINDS := slow or multiprocess or browser or install

.PHONY: run test unit tests-all notebooks lab render sync colab bench lock lock-upgrade test-latest clean

# The versions the course is tested with, from the lock (torch: its CPU build; tools/locked_versions.py).
$(STAMP): pyproject.toml $(LOCK) tools/locked_versions.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python tools/locked_versions.py install $(LOCK)
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m moe_helpers train --preset laptop --out $(RUN_DIR)

test: tests-all notebooks

# The fast tier: no training runs, no worker processes, no browser, no installs.
unit: $(STAMP)
	$(BIN)/python -m pytest -p no:nbmake -m "not ($(SLOW_KINDS))" tests

tests-all: $(STAMP)
	$(BIN)/python -m pytest tests

# One torch thread per notebook kernel unless OMP_NUM_THREADS says otherwise: on a 2-core machine
# busy with anything else, two spinning OpenMP threads made a training cell 20x slower.
notebooks: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest --nbmake --nbmake-timeout=900 --durations=0 notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

# Run every notebook with its default settings and keep the outputs (what GitHub and Colab show
# before anything runs); tests/test_notebooks.py fails when a notebook's code is newer than them.
# `make render NOTEBOOK=notebooks/02_expert_routing.ipynb` renders one.
render: $(STAMP)
	$(BIN)/python tools/render_notebooks.py $(NOTEBOOK)

# After editing a notebook's .py (or .ipynb), bring its pair up to date.
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.ipynb

# After changing [project.urls] Repository in pyproject.toml: rewrite every notebook's Colab badge
# and setup cell to point there.
colab: $(STAMP)
	$(BIN)/python -m moe_helpers.colab

bench: $(STAMP)
	$(BIN)/python benchmarks/moe_layer.py

# Re-resolve requirements-lock.txt after changing pyproject.toml (pins that still fit are kept);
# `make lock-upgrade` moves every package to its newest release. torch is locked to its CPU build:
# pip must see it (here: pip's find-links; elsewhere add PyTorch's CPU index, e.g.
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make lock).
LOCK_TORCH ?= $(shell sed -n 's/^torch==\([^+]*\).*/\1/p' $(LOCK))
PIP_COMPILE = $(BIN)/pip-compile --quiet --extra dev --all-build-deps --allow-unsafe --strip-extras \
	--no-emit-find-links --no-emit-index-url --output-file $(LOCK)
LOCK_HAS_CPU_TORCH = grep -q '^torch==.*+cpu' $(LOCK) || { echo "$(LOCK): pip found no CPU build of torch $(LOCK_TORCH) (see the comment above \`lock\` in the Makefile)"; exit 1; }
lock: $(STAMP)
	$(PIP_COMPILE) --upgrade-package "torch==$(LOCK_TORCH)" pyproject.toml
	@$(LOCK_HAS_CPU_TORCH)

lock-upgrade: $(STAMP)
	$(PIP_COMPILE) --upgrade --upgrade-package "torch==$(LOCK_TORCH)" pyproject.toml
	@$(LOCK_HAS_CPU_TORCH)

# The whole suite against the newest release of every dependency instead of the lock, in its own
# .venv-latest: how a maintainer learns of the next upstream break before a learner does. torch
# stays at the lock's CPU build (a new torch is a multi-GB download); LATEST_TORCH=1 lets it move too.
# TIER=unit runs the fast tier only.
LATEST := .venv-latest
TIER   ?= test
test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(if $(LATEST_TORCH),,grep '^torch==' $(LOCK) > $(LATEST)/torch.txt)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		$(if $(LATEST_TORCH),,--constraint $(LATEST)/torch.txt) -e '.[test]'
	@$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	@echo "Newer than the lock:"; $(LATEST)/bin/python tools/locked_versions.py newer $(LOCK) $(LATEST)/versions.txt
	@touch $(LATEST)/.installed
	$(MAKE) --no-print-directory $(TIER) VENV=$(LATEST)

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache build *.egg-info
