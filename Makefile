# Two commands do everything on a fresh clone:
#   make run    create .venv if missing, install, run the main job (writes to runs/)
#   make test   same bootstrap, then the unit tests and every notebook (nbmake)
# and `make lab` opens JupyterLab on notebooks/.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_DIR ?= runs/laptop-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test unit notebooks lab sync colab bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m moe_helpers train --preset laptop --out $(RUN_DIR)

test: unit notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# One torch thread per notebook kernel unless OMP_NUM_THREADS says otherwise: on a 2-core machine
# busy with anything else, two spinning OpenMP threads made a training cell 20x slower.
notebooks: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest --nbmake --nbmake-timeout=900 --durations=0 notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

# After editing a notebook's .py (or .ipynb), bring its pair up to date.
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.ipynb

# After changing [project.urls] Repository in pyproject.toml: rewrite every notebook's Colab badge
# and setup cell to point there.
colab: $(STAMP)
	$(BIN)/python -m moe_helpers.colab

bench: $(STAMP)
	$(BIN)/python benchmarks/moe_layer.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
