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
# QUANTIZE_VISION=none|int8: weights of the vision tower's layers (int8: ExecuTorch only, 8da8w).
QUANTIZE_VISION ?=
# ONNX_PROFILE=exact|fast: how ONNX Runtime computes quantized linears (float32, or int8 activations).
ONNX_PROFILE ?=
# IMAGE_SIZE=S: the side of the square image the graphs take (Qwen2-VL: a multiple of 28; default the model's).
IMAGE_SIZE ?=
# FRAMES=F: video frames per prompt of a video model (llava-video-7b: default 16).
FRAMES ?=
# METHOD=vlm-pruner|fastv|dart|divprune: the token selection (default vlm-pruner); make bench and
# make bench-select take several ("vlm-pruner fastv dart divprune") and put them side by side.
METHOD ?=
# make bench-select: the token counts N (default 576 2928 3136 12544).
SIZES ?=
# make bench: the pruned keeps, the baseline's keep (default N) and flags of runtime.bench.
BENCH_KEEPS    ?= 64 128 192
BENCH_BASELINE ?=
BENCH_FLAGS    ?=
# make bench-anchors: the runtimes to compare with (default all: onnxruntime_genai executorch_llama llama_cpp).
ANCHORS ?=
# make bench-soak: generations per backend.
SOAK_RUNS ?= 1000
# Defined before this line: `export` of a variable not yet defined defines it empty, and a later
# `?=` would then keep it empty.
# The variables reach the commands through the environment and are quoted there ("$$MODEL"):
# a value is always one argument, never code pasted into a command line.
export MODEL KEEP RATE ANCHORS BACKENDS RANDOM_WEIGHTS QUANTIZE QUANTIZE_VISION ONNX_PROFILE IMAGE_SIZE FRAMES METHOD SIZES BENCH_KEEPS BENCH_BASELINE BENCH_FLAGS SOAK_RUNS
COMMON_FLAGS = --model "$$MODEL" $${BACKENDS:+--backends "$$BACKENDS"} $${QUANTIZE:+--quantize "$$QUANTIZE"} \
               $${QUANTIZE_VISION:+--quantize-vision "$$QUANTIZE_VISION"} \
               $${ONNX_PROFILE:+--onnx-profile "$$ONNX_PROFILE"} $${IMAGE_SIZE:+--image-size "$$IMAGE_SIZE"} \
               $${FRAMES:+--frames "$$FRAMES"} $$([ "$$RANDOM_WEIGHTS" = 1 ] && echo --random-weights)

.PHONY: setup test export bench bench-anchors bench-linears bench-select bench-quality bench-noise bench-soak clean clean-staging

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

# Two passes (tests/conftest.py): everything but the real-width exports on two workers, then those
# alone, so that their ~10 GB never meets another test's memory.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not real_width" tests
	$(PY) -m pytest -q -m real_width tests

bench-select: setup
	$(PY) -m bench.select_speed $${METHOD:+--methods $$METHOD} $${SIZES:+--sizes $$SIZES}

# Which tokens each method keeps on synthetic scenes with known objects: coverage, contiguity,
# redundancy (bench/select_quality.py). Writes bench/results/select_quality.{json,png}.
bench-quality: setup
	$(PY) -m bench.select_quality

# The noise that quantizing activations on the fly makes, against depth: eager 8da4w against itself
# with each linear's result moved one ulp, at LLaVA-1.5-7B's widths with 3, 8, 16 and 32 decoder layers
# (bench/parity_noise.py; 14 min, peak 14.6 GiB). It calibrates runtime.parity's statistical criteria.
# QUANTIZE_VISION=int8: the vision tower in 8da8w too, every linear nudged (writes parity_noise-vision-int8.json).
bench-noise: setup
	$(PY) -m bench.parity_noise $${QUANTIZE_VISION:+--quantize-vision "$$QUANTIZE_VISION" --json bench/results/parity_noise-vision-$$QUANTIZE_VISION.json}

# Pruned (each keep of BENCH_KEEPS, each method of METHOD) next to unpruned (keep BENCH_BASELINE,
# default N) on every backend, artifacts under artifacts/; a missing one is exported first (with RANDOM_WEIGHTS,
# QUANTIZE, BACKENDS as for export, without the parity check: `make export` checks). BENCH_FLAGS
# go to runtime.bench (e.g. --runs 1 --max-new-tokens 8 at 7B). Writes bench/results/runtime-*.json.
bench: setup
	$(PY) -m bench.runtime_speed $(COMMON_FLAGS) --keeps $$BENCH_KEEPS $${METHOD:+--methods $$METHOD} \
	  $${BENCH_BASELINE:+--baseline "$$BENCH_BASELINE"} \
	  -- $$BENCH_FLAGS

# Our unpruned and keep-KEEP (default 64) artifacts next to ONNX Runtime GenAI, ExecuTorch's Llama
# export and llama.cpp on the same language model (bench/anchors/): each anchor built once from one
# random-weight checkpoint, in its own virtual environment under .venv-anchors/ where it needs
# packages we do not pin. BENCH_FLAGS are runtime.bench's timing flags. Writes
# bench/results/anchors-<MODEL>.json.
bench-anchors: setup
	$(PY) -m bench.anchors $(COMMON_FLAGS) $${KEEP:+--keep "$$KEEP"} $${ANCHORS:+--anchors $$ANCHORS} $$BENCH_FLAGS

# The int4 linears alone at one token (a decode step's M = 1): ONNX Runtime's MatMulNBits in both
# profiles and XNNPACK's 8da4w, GB/s against the machine's read rate: the ceiling each backend's
# kernels set on decode (bench/int4_linears.py; 1 min). The widths of MODEL when given on the
# command line, else LLaVA-1.5-7B's. Writes bench/results/int4_linears-<model>.json.
bench-linears: setup
	$(PY) -m bench.int4_linears $(if $(filter-out default file,$(origin MODEL)),--model "$(MODEL)")

# 1000 generations in one process per backend (SOAK_RUNS): resident memory must not grow, outputs
# must not change. Writes bench/results/soak-*.json.
bench-soak: setup
	$(PY) -m bench.soak $(COMMON_FLAGS) $${KEEP:+--keep "$$KEEP"} --runs "$$SOAK_RUNS"

# make export [MODEL=tiny-llava] [KEEP=64 | RATE=0.889] [METHOD=vlm-pruner] [BACKENDS=onnx,executorch]
#             [RANDOM_WEIGHTS=1] [QUANTIZE=int4] [ONNX_PROFILE=fast] [IMAGE_SIZE=672] [FRAMES=16]
# -> artifacts/<MODEL>/keep<R>[-<METHOD>]/ (export/ARTIFACTS.md), parity-checked against the eager model.
export: setup
	$(PY) -m export $(COMMON_FLAGS) $${KEEP:+--keep "$$KEEP"} $${RATE:+--rate "$$RATE"} $${METHOD:+--method "$$METHOD"}

# Staging folders that killed exports left under artifacts/ (each export and run names them).
clean-staging: setup
	$(PY) -m export --clean -o artifacts

clean:
	rm -rf $(VENV) .venv-anchors artifacts build *.egg-info
