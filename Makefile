# One entry point per job. `make setup` then `make test` is all a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

MODEL    ?= tiny-llava
KEEP     ?=
RATE     ?=
BACKENDS ?= onnx,executorch

.PHONY: setup test export bench bench-select clean

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

# Pruned (keep BENCH_KEEP) next to unpruned (keep BENCH_BASELINE = N) on every backend, artifacts
# under artifacts/; a missing one is exported first. Writes bench/results/runtime-*.json.
BENCH_KEEP     ?= 64
BENCH_BASELINE ?= 576
bench: setup
	@for keep in $(BENCH_KEEP) $(BENCH_BASELINE); do \
	  if [ ! -f artifacts/$(MODEL)/keep$$keep/manifest.json ]; then \
	    echo "artifacts/$(MODEL)/keep$$keep is missing; exporting it: $(PY) -m export --model $(MODEL) --keep $$keep -o artifacts"; \
	    $(PY) -m export --model $(MODEL) --keep $$keep -o artifacts || { \
	      echo "export failed; fix it, or run the command above by hand, then make bench"; exit 1; }; \
	  fi; \
	done
	$(PY) -m runtime.bench artifacts/$(MODEL)/keep$(BENCH_KEEP) --baseline artifacts/$(MODEL)/keep$(BENCH_BASELINE)

# make export [MODEL=tiny-llava] [KEEP=64 | RATE=0.889] [BACKENDS=onnx,executorch]
# -> artifacts/<MODEL>/keep<R>/ (export/ARTIFACTS.md), parity-checked against the eager model.
export: setup
	$(PY) -m export --model $(MODEL) $(if $(KEEP),--keep $(KEEP)) $(if $(RATE),--rate $(RATE)) --backends $(BACKENDS)

clean:
	rm -rf $(VENV) artifacts build *.egg-info
