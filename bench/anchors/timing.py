"""What every anchor shares: its command line, the prompt's token ids, the timed runs and the JSON they print.

An anchor module provides two functions and calls `anchor_main(build, load)`:

    build(checkpoint: Path, work: Path) -> None         the anchor's artifact, written under `work`
    load(work: Path, threads: int | None) -> Generate   ready to generate

where `Generate(prompt_ids, max_new_tokens) -> Stats` runs one greedy generation that ignores end of
sequence and times it as our runtime does (`runtime.generate.Stats`: a text-only prompt has no
preprocessing, vision or embedding time). A build may leave what it chose (quantization settings,
tool versions) in `work`/anchor.json; `measure` reports it with the timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.generate import Stats, ms_since
from runtime.measure import runs_report

Generate = Callable[[list[int], int], Stats]
Build = Callable[[Path, Path], None]
Load = Callable[[Path, "int | None"], Generate]

RECORD = "anchor.json"  # in an anchor's work folder: what its build chose
PROMPT_SEED = 0
FIRST_ORDINARY_ID = 3  # Llama's <unk>, <s>, </s> come first


def prompt_ids(length: int, vocab_size: int) -> list[int]:
    """The same `length` token ids for every anchor: a BOS, then ids drawn from a fixed seed."""
    rng = np.random.default_rng(PROMPT_SEED)
    return [1, *rng.integers(FIRST_ORDINARY_ID, vocab_size, size=length - 1).tolist()]


def text_stats(prefill_ms: float, first_token_ms: float, decode_ms: float, prompt_tokens: int, generated: int) -> Stats:
    """Stats of a text-only generation: what our runtime spends on the image is zero here."""
    return Stats(
        preprocess_ms=0.0,
        vision_ms=0.0,
        embed_ms=0.0,
        prefill_ms=prefill_ms,
        time_to_first_token_ms=first_token_ms,
        decode_ms=decode_ms,
        num_prompt_tokens=prompt_tokens,
        num_generated_tokens=generated,
    )


def measure(
    load: Load, work: Path, *, prompt_tokens: int, vocab_size: int, max_new_tokens: int, runs: int, warmup: int,
    threads: int | None,
) -> dict[str, Any]:
    """Load the anchor's artifact, warm up, time `runs` generations; the JSON-ready result."""
    tick = time.perf_counter()
    generate = load(work, threads)
    load_ms = ms_since(tick)
    ids = prompt_ids(prompt_tokens, vocab_size)
    for _ in range(warmup):
        generate(ids, max_new_tokens)
    stats = [generate(ids, max_new_tokens) for _ in range(runs)]
    for s in stats:
        if s.num_prompt_tokens != prompt_tokens or s.num_generated_tokens != max_new_tokens:
            raise RuntimeError(f"the anchor ran {s.num_prompt_tokens} prompt tokens and generated "
                               f"{s.num_generated_tokens}, asked {prompt_tokens} and {max_new_tokens}")
    record = work / RECORD
    return {
        "build": json.loads(record.read_text()) if record.is_file() else {},
        "load_ms": load_ms,
        **runs_report(stats),
    }


def anchor_main(build: Build, load: Load, argv: list[str] | None = None) -> int:
    """`build` or `measure` from the command line (module docstring of `bench.anchors`)."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build")
    build_cmd.add_argument("--checkpoint", type=Path, required=True)
    build_cmd.add_argument("--work", type=Path, required=True)
    measure_cmd = commands.add_parser("measure")
    measure_cmd.add_argument("--work", type=Path, required=True)
    measure_cmd.add_argument("--prompt-tokens", type=int, required=True)
    measure_cmd.add_argument("--vocab-size", type=int, required=True)
    measure_cmd.add_argument("--max-new-tokens", type=int, default=32)
    measure_cmd.add_argument("--runs", type=int, default=3)
    measure_cmd.add_argument("--warmup", type=int, default=1)
    measure_cmd.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")  # progress on stderr
    if args.command == "build":
        build(args.checkpoint, args.work)
        return 0
    result = measure(
        load, args.work, prompt_tokens=args.prompt_tokens, vocab_size=args.vocab_size,
        max_new_tokens=args.max_new_tokens, runs=args.runs, warmup=args.warmup, threads=args.threads,
    )
    print(json.dumps(result))
    return 0
