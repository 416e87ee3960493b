"""ONNX Runtime GenAI: the checkpoint through its own model builder (int4 CPU), generated from with its own generator.

    build: `python -m onnxruntime_genai.models.builder -i CHECKPOINT -o WORK/model -p int4 -e cpu`, the
           builder's defaults for int4 on CPU (MatMulNBits, RTN; the settings it chose go to WORK/anchor.json).
           From the float16 checkpoint, the builder holds the float32 model a few times over while it
           quantizes (6.7 bytes per parameter measured: ~46 GB at 7B); where that does not fit, it builds
           from the same weights in int4 (`checkpoint.write_int4_checkpoint`, RTN as its own quantizer
           does), which it turns into MatMulNBits directly (1.3 bytes per parameter; its MatMulNBits then
           take the zero points as an input, all 8)
    load:  `og.Model` on WORK/model, `threads` intra-op threads (default: ONNX Runtime GenAI's own,
           half the machine's logical CPUs, at most 16)

Generation semantics (onnxruntime-genai's src/generators.cpp, Generator::AppendTokens and ComputeLogits;
src/standard_decoding_strategy.cpp, RunStandardDecodingStep): `append_tokens` runs the model on the
prompt and keeps the logits; `generate_next_token` runs the model on the last picked token only when
no logits are pending (so not right after `append_tokens`), then picks the next token from them.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np
import onnx
from safetensors import safe_open

from bench.anchors.timing import RECORD, Generate, anchor_main, text_stats
from runtime.generate import Stats, ms_since

logger = logging.getLogger(__name__)

MODEL = "model"  # the builder's output folder: model.onnx(.data), genai_config.json, tokenizer files
BUILD_LOG = "build.log"  # the builder's whole output
BUILDER = "onnxruntime_genai.models.builder"
FLAGS = ["-p", "int4", "-e", "cpu"]  # nothing else: the builder's defaults are what a user gets
PROGRESS = ("Reading ", "Saving ONNX model", "Saving GenAI config")  # the builder's lines worth logging
TAIL = 60  # lines of a failed build's output in the error
# The builder's peak per parameter of a float16 checkpoint: 1.36 GB per LLaVA-1.5-7B layer (202 M
# parameters), measured; at 3 layers with the embeddings it peaked at 7.1 GB.
FLOAT_BUILD_BYTES_PER_PARAMETER = 6.7
INT4_CHECKPOINT = "int4-checkpoint"  # in the staging folder while the builder reads it


def build(checkpoint: Path, work: Path) -> None:
    """`work`/model from the Hugging Face checkpoint with ONNX Runtime GenAI's model builder, and `work`/anchor.json.

    Raises:
        FileNotFoundError: no config.json in `checkpoint` (the builder would take the path for a Hub name).
        RuntimeError: the builder failed (its output's tail in the message), or left no MatMulNBits node.
    """
    checkpoint, work = checkpoint.resolve(), work.resolve()  # the builder runs in the staging folder
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a Hugging Face checkpoint: no config.json")
    staging = work.with_name(work.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Imported here, as in builder_input: they import torch, which the measuring process, whose
    # peak memory is reported, does not load.
    from export.memory import HEADROOM_BYTES, physical_memory_bytes

    tick = time.perf_counter()
    source, source_kind = builder_input(checkpoint, staging / INT4_CHECKPOINT, physical_memory_bytes() - HEADROOM_BYTES)
    # -c: the builder's cache folder (default ./cache_dir), removed by the builder when left empty.
    command = [sys.executable, "-m", BUILDER, "-i", str(source), "-o", str(staging / MODEL), *FLAGS,
               "-c", str(staging / "cache")]
    logger.info("building %s with %s", source, " ".join(command[1:]))
    _run_builder(command, staging / BUILD_LOG)
    shutil.rmtree(staging / INT4_CHECKPOINT, ignore_errors=True)
    record = {
        "builder": f"python -m {BUILDER} -i CHECKPOINT -o {MODEL} {' '.join(FLAGS)}",
        "checkpoint": source_kind,
        "onnxruntime_genai": importlib.metadata.version("onnxruntime-genai"),
        "matmulnbits": matmulnbits_settings(staging / MODEL / "model.onnx"),
    }
    (staging / RECORD).write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    staging.rename(work)
    logger.info("built %s in %.0f s: %s", work / MODEL, ms_since(tick) / 1000, record["matmulnbits"])


def builder_input(checkpoint: Path, int4_dir: Path, available: int) -> tuple[Path, str]:
    """(the checkpoint the builder reads, its weights' kind): the float16 `checkpoint` where its build
    fits in `available` bytes, else the same weights in int4, written to `int4_dir`."""
    from bench.anchors.checkpoint import write_int4_checkpoint
    from export.memory import GIB

    needed = float_build_bytes(checkpoint)
    if needed <= available:
        return checkpoint, "float16"
    logger.info("the builder would need ~%.0f GiB from float16: it builds from the weights in int4", needed / GIB)
    return write_int4_checkpoint(checkpoint, int4_dir), "int4 (GPTQ format, RTN)"


def float_build_bytes(checkpoint: Path) -> int:
    """The builder's estimated peak from the float16 `checkpoint`: its parameters (read from the shards'
    headers) times `FLOAT_BUILD_BYTES_PER_PARAMETER`."""
    parameters = 0
    for path in checkpoint.glob("*.safetensors"):
        with safe_open(path, "np") as shard:
            parameters += sum(math.prod(shard.get_slice(name).get_shape()) for name in shard.keys())
    return int(FLOAT_BUILD_BYTES_PER_PARAMETER * parameters)


def matmulnbits_settings(model_path: Path) -> list[dict[str, int]]:
    """The distinct (bits, block_size, accuracy_level, zero points given or not) of the model's
    MatMulNBits nodes, each with its node count.

    Raises:
        RuntimeError: the model has no MatMulNBits node (the builder did not quantize).
    """
    graph = onnx.load(model_path, load_external_data=False).graph
    settings = Counter(
        (*sorted((a.name, a.i) for a in node.attribute if a.name in ("bits", "block_size", "accuracy_level")),
         ("zero_points", int(len(node.input) > 3 and node.input[3] != "")))
        for node in graph.node
        if node.op_type == "MatMulNBits"
    )
    if not settings:
        raise RuntimeError(f"{model_path} has no MatMulNBits node: the builder did not quantize to int4")
    return [{**dict(attributes), "nodes": count} for attributes, count in settings.items()]


def load(work: Path, threads: int | None) -> Generate:
    """The built model in ONNX Runtime GenAI on CPU, ready for greedy generations that ignore end of sequence."""
    import onnxruntime_genai as og  # in the anchor's environment, not the toolchain's

    config = og.Config(str(work / MODEL))
    if threads is not None:
        # Merged into genai_config.json's session options (src/config.cpp, OverlayConfig; src/models/model.cpp,
        # CreateSessionOptionsFromConfig applies intra_op_num_threads over its own default).
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)

    def generate(prompt_ids: list[int], max_new_tokens: int) -> Stats:
        ids = np.asarray(prompt_ids, dtype=np.int32)
        length = len(prompt_ids) + max_new_tokens
        start = time.perf_counter()
        params = og.GeneratorParams(model)
        # min_length masks end of sequence until the last token; max_length sizes the KV cache (shared
        # past/present buffer) and makes the max_new_tokens-th token the last one.
        params.set_search_options(do_sample=False, min_length=length, max_length=length)
        generator = og.Generator(model, params)  # timed in the TTFT: its KV cache is allocated here
        tick = time.perf_counter()
        generator.append_tokens(ids)  # prefill: the model on the prompt (logits of every position; the last one kept)
        prefill_ms = ms_since(tick)
        generator.generate_next_token()  # the first token: argmax of the prefill's logits, no model run
        generator.get_next_tokens()  # its id, read back
        first_token_ms = ms_since(start)  # from the generator's set-up to the first token's id
        tick = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            generator.generate_next_token()  # one decode step: the model on the last token, then its argmax
        decode_ms = ms_since(tick)
        generated = generator.token_count() - len(prompt_ids)
        return text_stats(prefill_ms, first_token_ms, decode_ms, len(prompt_ids), generated)

    return generate


def _run_builder(command: list[str], log_path: Path) -> None:
    """Run the model builder, its output into `log_path`, its progress lines logged.

    Raises:
        RuntimeError: the builder failed (the tail of its output in the message).
    """
    tail: deque[str] = deque(maxlen=TAIL)
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=log_path.parent)
        for line in process.stdout:  # text mode: tqdm's carriage returns end lines too
            log.write(line)
            tail.append(line)
            if line.startswith(PROGRESS):
                logger.info("builder: %s", line.rstrip())
        returncode = process.wait()
    if returncode != 0:
        raise RuntimeError(f"the model builder failed (exit {returncode}), output in {log_path}:\n{''.join(tail)}")


if __name__ == "__main__":
    sys.exit(anchor_main(build, load))
