"""Time one artifact on one backend in this process and report its peak resident memory.

`runtime.bench` starts one fresh process per (artifact, backend), so that the peak RSS
(`VmHWM`) of one does not include another's:

    python -m runtime.measure ARTIFACT_DIR --backend onnx [--runs 5] [--warmup 1] [--max-new-tokens 32] [--low-memory]

prints one JSON object: the median of each timing over the runs (after the warm-up runs), every
run's timings, the load time and the peak RSS. Imports torch only for the executorch backend.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.backends import BACKENDS
from runtime.cli import HelpFormatter, run_cli
from runtime.generate import GenerationConfig, Runner, Stats, ms_since
from runtime.samples import DEFAULT_PROMPT


def measure(
    artifact_dir: str | Path,
    backend: str,
    *,
    runs: int = 5,
    warmup: int = 1,
    max_new_tokens: int = 32,
    num_threads: int | None = None,
    prompt: str = DEFAULT_PROMPT,
    low_memory: bool = False,
    allow_failed_parity: bool = False,
) -> dict[str, Any]:
    """Load the artifact (files not re-hashed: the caller checked them), warm up, time `runs` generations.

    Decoding ignores end-of-sequence, so that every run decodes `max_new_tokens` tokens.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    tick = time.perf_counter()
    runner = Runner(
        artifact_dir,
        backend,
        num_threads=num_threads,
        verify=False,
        low_memory=low_memory,
        allow_failed_parity=allow_failed_parity,
    )
    load_ms = ms_since(tick)
    image = runner.inputs.family.sample()
    config = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    for _ in range(warmup):
        runner.generate(image, prompt, config)
    stats = [runner.generate(image, prompt, config).stats for _ in range(runs)]
    return {
        "artifact": str(artifact_dir),
        "backend": backend,
        "keep": runner.artifact.keep,
        "method": runner.artifact.method,
        "parity": runner.artifact.parity_on(backend),
        "load_ms": load_ms,
        **runs_report(stats),
    }


def runs_report(stats: list[Stats]) -> dict[str, Any]:
    """The timed runs' medians, each run, and this program's peak memory, JSON-ready."""
    return {
        "median": median_stats(stats),
        "runs": [{**asdict(s), "decode_tokens_per_s": s.decode_tokens_per_s} for s in stats],
        "peak_rss_mib": program_peak_rss_mib(),
        "pss_after_mib": proportional_set_size_mib(),
    }


def median_stats(stats: list[Stats]) -> dict[str, float]:
    """The median of each timing (and of decode tokens/s) over the runs."""
    fields = [name for name in asdict(stats[0]) if name.endswith("_ms")]
    medians = {name: statistics.median(getattr(s, name) for s in stats) for name in fields}
    medians["decode_tokens_per_s"] = statistics.median(s.decode_tokens_per_s for s in stats)
    medians["num_prompt_tokens"] = stats[0].num_prompt_tokens
    medians["num_generated_tokens"] = stats[0].num_generated_tokens
    return medians


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def program_peak_rss_mib() -> float:
    """Peak resident memory of the program this process runs, MiB: Linux's `VmHWM`, which starts
    again at exec. `ru_maxrss` does not: a child of `subprocess` keeps its parent's (a
    `runtime.measure` child of `runtime.bench` reported the bench's 1.3 GiB where it peaked at
    0.86 GiB). Elsewhere `peak_rss_mib`."""
    peak = _proc_field_mib("status", "VmHWM")
    return peak_rss_mib() if peak is None else peak


def proportional_set_size_mib() -> float | None:
    """Physical memory of this process now, MiB: Linux's proportional set size (`smaps_rollup`),
    which counts a page that two mappings share once, where RSS counts it per mapping (prefill and
    decode map one file of prepacked weights, `runtime.backends.onnx_prepacked`: RSS counts those
    pages twice). Read once, after the timed runs: walking a 7B process's page tables takes ~0.2 s.
    None off Linux."""
    return _proc_field_mib("smaps_rollup", "Pss")


def _proc_field_mib(name: str, field: str) -> float | None:
    """`field` of /proc/self/`name` (a "Field:   N kB" line), MiB; None where there is no such file."""
    path = Path("/proc/self") / name
    if not path.exists():
        return None
    line = next(line for line in path.read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024.0


def release_freed_memory() -> None:
    """Collect garbage and hand the allocator's free memory back to the system.

    glibc keeps freed blocks in its arenas, so a process's resident memory stays at its high-water
    mark after a large stage ends, and the next stage's peak stacks on top of it. `malloc_trim`
    returns those blocks; elsewhere than glibc only the garbage collection runs.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def current_rss_mib() -> float:
    """Resident memory of this process now, MiB (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.measure",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    return add_timing_flags(parser)


def add_timing_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of how each artifact is timed, shared with `runtime.bench`."""
    parser.add_argument("--runs", type=int, default=5, help="timed generations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed generations first")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per generation (EOS ignored)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its choice)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the image")
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="ONNX Runtime: one copy of the language model, its graphs reopened in every generation; "
        "ExecuTorch: the vision encoder loaded for each image and released after (timed)",
    )
    parser.add_argument(
        "--allow-failed-parity", action="store_true", help="also time a backend whose parity check failed at export"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    result = measure(
        args.artifact_dir,
        args.backend,
        runs=args.runs,
        warmup=args.warmup,
        max_new_tokens=args.max_new_tokens,
        num_threads=args.threads,
        prompt=args.prompt,
        low_memory=args.low_memory,
        allow_failed_parity=args.allow_failed_parity,
    )
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
