# One entry point per job. `make setup` then `make test` is all a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

MODEL    ?= tiny-llava
KEEP     ?=
RATE     ?=
BACKENDS ?= onnx,executorch

.PHONY: setup test test-all bench-select clean

setup: $(VENV)/.installed

# torch is pinned and installed first: anything that depends on torch then finds it and
# pulls no CUDA wheels.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .
	$(PIP) check
	touch $@

test: setup
	$(PY) -m pytest -q tests

bench-select: setup
	$(PY) -m bench.select_speed

clean:
	rm -rf $(VENV) artifacts build *.egg-info
