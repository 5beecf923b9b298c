# The two quick-start commands: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml setup.py qwenvl_roi_plugin.pth
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# ARCH=qwen3_vl (or another tiny-model architecture) runs the demo for that family into runs/demo-<ARCH>
ARCH ?= qwen2_5_vl
DEMO_OUT := runs/demo$(if $(filter-out qwen2_5_vl,$(ARCH)),-$(ARCH))

demo: $(STAMP)
	$(OFFLINE) $(BIN)/qwenvl-roi demo --out $(DEMO_OUT) --arch $(ARCH)

# Two pytest-xdist workers (the CI machine has 2 cores); tests sharing an expensive fixture stay together.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
