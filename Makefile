# One entry point per job. `make setup` then `make test` is all a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

MODEL    ?= tiny-llava
KEEP     ?=
RATE     ?=
# BACKENDS=onnx,executorch: default every backend whose export fits this machine's memory.
BACKENDS ?=
# RANDOM_WEIGHTS=1: the architecture with random weights (no checkpoint needed).
RANDOM_WEIGHTS ?=
# QUANTIZE=none|int4|int8: weights of the language model's linears (default: the model's own).
QUANTIZE ?=
EXPORT_FLAGS = --model $(MODEL) $(if $(BACKENDS),--backends $(BACKENDS)) $(if $(filter 1,$(RANDOM_WEIGHTS)),--random-weights) \
               $(if $(QUANTIZE),--quantize $(QUANTIZE))

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

# Pruned (each keep of BENCH_KEEPS) next to unpruned (keep BENCH_BASELINE = N) on every backend,
# artifacts under artifacts/; a missing one is exported first (with RANDOM_WEIGHTS, QUANTIZE,
# BACKENDS as for export, without the parity check: `make export` checks). BENCH_FLAGS go to
# runtime.bench (e.g. --runs 1 --max-new-tokens 8 at 7B). Writes bench/results/runtime-*.json.
BENCH_KEEPS    ?= 64 128 192
BENCH_BASELINE ?= 576
BENCH_FLAGS    ?=
# The artifact folder of keep $(1), as the exporter names it (a suffix for a non-default QUANTIZE).
artifact_dir = $$($(PY) -c "from export.config import ExportConfig; print(ExportConfig(model='$(MODEL)', keep=$(1), quantization=$(if $(QUANTIZE),'$(QUANTIZE)',None)).artifact_dir)")
bench: setup
	@for keep in $(BENCH_KEEPS) $(BENCH_BASELINE); do \
	  dir=$(call artifact_dir,$$keep); \
	  if [ ! -f $$dir/manifest.json ]; then \
	    echo "$$dir is missing; exporting it: $(PY) -m export $(EXPORT_FLAGS) --keep $$keep --skip-parity"; \
	    $(PY) -m export $(EXPORT_FLAGS) --keep $$keep --skip-parity || { \
	      echo "export failed; fix it, or run the command above by hand, then make bench"; exit 1; }; \
	  fi; \
	done
	$(PY) -m runtime.bench $(foreach keep,$(BENCH_KEEPS),$(call artifact_dir,$(keep))) \
	  --baseline $(call artifact_dir,$(BENCH_BASELINE)) $(BENCH_FLAGS)

# make export [MODEL=tiny-llava] [KEEP=64 | RATE=0.889] [BACKENDS=onnx,executorch] [RANDOM_WEIGHTS=1]
#             [QUANTIZE=int4]
# -> artifacts/<MODEL>/keep<R>/ (export/ARTIFACTS.md), parity-checked against the eager model.
export: setup
	$(PY) -m export $(EXPORT_FLAGS) $(if $(KEEP),--keep $(KEEP)) $(if $(RATE),--rate $(RATE))

clean:
	rm -rf $(VENV) artifacts build *.egg-info
