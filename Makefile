# Quick start:  make demo       (the whole pipeline and every detector on the embedded data, CPU, 9 to 19 minutes)
#               make test       (the linter, then the whole test suite: what CI runs)
#               make test-fast  (the linter, then the tests not marked slow: a few minutes)
# Both create the virtual environment .venv and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo3d demo-lesion test test-fast venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	PYTHON=$(BIN)/python bash scripts/demo.sh

# The 3D (latent by default) pipeline offline on MNI152 volumes; nilearn's wheel only for its template files.
demo3d: venv
	$(BIN)/pip install --quiet --no-deps nilearn==0.14.1
	PYTHON=$(BIN)/python bash scripts/demo_3d.sh

# Where, measured: 2D MNI152 slices with lesions and masks, the localisation table; nilearn's wheel for the template.
demo-lesion: venv
	$(BIN)/pip install --quiet --no-deps nilearn==0.14.1
	PYTHON=$(BIN)/python bash scripts/demo_lesion.sh

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=25  # the 25 slowest, to keep the suite within about 15 minutes

# Without the tests marked slow (training, subprocesses, torchrun, benchmarks, kills): for the edit-test loop.
test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf demo_output demo3d_output demo_lesion_output
