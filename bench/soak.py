"""`make bench-soak`: many generations in one process; resident memory must not grow and every
output must equal the first.

    python -m bench.soak [--model tiny-llava] [--keep 64] [--runs 1000] [--max-new-tokens 8]

For each backend of the artifact (exported first when missing, `bench.artifacts`), one `Runner` answers the same prompt about the same image `--runs` times
(end-of-sequence ignored, `--max-new-tokens` each). Reported: resident memory after the first run
and after the last (and every tenth of the way), the growth, and whether token ids and kept indices
were identical in every run. Table on stdout, JSON in bench/results/soak-<model>-keep<R>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.artifacts import add_artifact_flags, ensure_artifact
from runtime.artifact import load_artifact
from runtime.cli import RESULTS_DIR, HelpFormatter, import_torch_quietly, run_cli, write_report
from runtime.generate import GenerationConfig, Runner
from runtime.measure import current_rss_mib
from runtime.samples import DEFAULT_PROMPT


def soak(folder: Path, backend: str, *, runs: int, max_new_tokens: int) -> dict[str, Any]:
    """`runs` generations with one runner; resident memory along the way and output stability."""
    runner = Runner(folder, backend)
    image, config = runner.inputs.family.sample(), GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    first = runner.generate(image, DEFAULT_PROMPT, config)
    rss = {1: current_rss_mib()}
    identical = True
    start = time.perf_counter()
    for run in range(2, runs + 1):
        result = runner.generate(image, DEFAULT_PROMPT, config)
        identical &= result.token_ids == first.token_ids and result.kept_indices == first.kept_indices
        if run % max(1, runs // 10) == 0 or run == runs:
            rss[run] = current_rss_mib()
    return {
        "backend": backend,
        "runs": runs,
        "seconds": time.perf_counter() - start,
        "rss_mib": rss,
        "rss_growth_mib": rss[runs] - rss[1],
        "outputs_identical": identical,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_artifact_flags(parser)
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    return parser


def run(args: argparse.Namespace) -> int:
    import_torch_quietly()
    if args.runs < 2:
        raise ValueError(f"--runs must be at least 2, got {args.runs}")
    folder = ensure_artifact(args, args.keep)
    results = []
    for backend in load_artifact(folder).backends:
        print(f"soaking {folder} on {backend}: {args.runs} generations ...", flush=True)
        results.append(soak(folder, backend, runs=args.runs, max_new_tokens=args.max_new_tokens))
    rows = [
        [r["backend"], r["runs"], f"{r['seconds']:.0f}", f"{r['rss_mib'][1]:.0f}", f"{r['rss_mib'][r['runs']]:.0f}",
         f"{r['rss_growth_mib']:+.1f}", "yes" if r["outputs_identical"] else "NO"]
        for r in results
    ]
    headers = ["backend", "runs", "seconds", "RSS after run 1 MiB", "RSS at the end MiB", "growth MiB", "outputs identical"]
    print(tabulate(rows, headers=headers, disable_numparse=True))
    write_report({"artifact": str(folder), "results": results}, RESULTS_DIR / f"soak-{args.model}-keep{args.keep}.json")
    return 0 if all(r["outputs_identical"] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
