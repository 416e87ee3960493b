"""Benchmark a pruned artifact next to an unpruned (or less pruned) one, on each backend.

    python -m runtime.bench ARTIFACT_DIR [--baseline UNPRUNED_DIR] [--backends onnx executorch]
        [--runs 5] [--warmup 1] [--max-new-tokens 32] [--threads N] [--json FILE]

Each (artifact, backend) runs in a fresh process (`runtime.measure`): medians over the runs after
the warm-up of the vision encoder time, prefill time, time to first token and decode tokens/s,
and the process's peak resident memory. Beside the measured speed-ups stand the ones the prefill
matmul FLOPs predict (`runtime.flops`), language model only and end to end with the vision
encoder, so that a reader sees how much of the possible gain the runtime turns into time.
Prints a table, writes JSON (default under bench/results/).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from runtime.artifact import Artifact, load_artifact
from runtime.backends import BACKENDS
from runtime.flops import ModelDims, lm_prefill_flops, vision_flops
from runtime.samples import DEFAULT_PROMPT

logger = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"


def run_bench(
    artifact_dir: str | os.PathLike,
    *,
    baseline_dir: str | os.PathLike | None = None,
    backends: list[str] | None = None,
    runs: int = 5,
    warmup: int = 1,
    max_new_tokens: int = 32,
    num_threads: int | None = None,
    prompt: str = DEFAULT_PROMPT,
) -> dict[str, Any]:
    """Measure the artifact (and the baseline) on each backend; return the JSON-ready results.

    Raises:
        ValueError: a baseline of another model, or a backend one of the artifacts lacks.
    """
    if runs < 1 or warmup < 0 or max_new_tokens < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, max_new_tokens >= 1; got {runs}, {warmup}, {max_new_tokens}")
    artifacts = {"pruned": load_artifact(artifact_dir)}
    if baseline_dir is not None:
        artifacts["baseline"] = load_artifact(baseline_dir)
        if artifacts["baseline"].model_name != artifacts["pruned"].model_name:
            raise ValueError(
                f"the baseline is {artifacts['baseline'].model_name}, the artifact {artifacts['pruned'].model_name}"
            )
    if backends is None:
        backends = [b for b in BACKENDS if all(b in a.backends for a in artifacts.values())]
    if not backends:
        raise ValueError("the artifact and the baseline hold no backend in common")
    for artifact in artifacts.values():
        for backend in backends:
            artifact.require_backend(backend)

    options = ["--runs", str(runs), "--warmup", str(warmup), "--max-new-tokens", str(max_new_tokens)]
    options += ["--prompt", prompt] + (["--threads", str(num_threads)] if num_threads is not None else [])
    results = []
    for backend in backends:
        for role, artifact in artifacts.items():
            logger.info("measuring %s keep %d on %s", artifact.model_name, artifact.keep, backend)
            result = _measure_in_subprocess(artifact.root, backend, options)
            results.append({"role": role, **result})

    pruned = artifacts["pruned"]
    reference_keep = artifacts["baseline"].keep if "baseline" in artifacts else pruned.num_image_tokens
    prompt_tokens = results[0]["median"]["num_prompt_tokens"]
    return {
        "model": pruned.model_name,
        "artifacts": {role: {"path": str(a.root), "keep": a.keep} for role, a in artifacts.items()},
        "settings": {
            "runs": runs,
            "warmup": warmup,
            "max_new_tokens": max_new_tokens,
            "threads": num_threads,
            "prompt": prompt,
            "prompt_tokens": prompt_tokens,
        },
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "flops": flop_prediction(pruned, prompt_tokens=prompt_tokens, reference_keep=reference_keep),
        "results": results,
        "speedups": _speedups(results) if "baseline" in artifacts else {},
    }


def flop_prediction(artifact: Artifact, *, prompt_tokens: int, reference_keep: int) -> dict[str, Any]:
    """Prefill FLOPs at the artifact's keep and at `reference_keep`, and the speed-ups they predict."""
    dims = ModelDims.from_manifest(artifact.manifest)
    vision = vision_flops(dims)
    lm = {keep: lm_prefill_flops(dims, prompt_tokens=prompt_tokens, keep=keep) for keep in {artifact.keep, reference_keep}}
    return {
        "vision": vision,
        "lm_prefill": {"keep": lm[artifact.keep], "reference_keep": lm[reference_keep]},
        "keep": artifact.keep,
        "reference_keep": reference_keep,
        "predicted_speedup": {
            "lm_prefill": lm[reference_keep] / lm[artifact.keep],
            "end_to_end": (vision + lm[reference_keep]) / (vision + lm[artifact.keep]),
        },
    }


def _measure_in_subprocess(root: Path, backend: str, options: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "runtime.measure", str(root), "--backend", backend, *options]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {root} on {backend} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _speedups(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Baseline / pruned per backend: time ratios (> 1: pruned is faster) and the decode rate ratio."""
    by_key = {(r["backend"], r["role"]): r["median"] for r in results}
    speedups = {}
    for backend in dict.fromkeys(r["backend"] for r in results):
        base, pruned = by_key[backend, "baseline"], by_key[backend, "pruned"]
        speedups[backend] = {
            "vision": base["vision_ms"] / pruned["vision_ms"],
            "prefill": base["prefill_ms"] / pruned["prefill_ms"],
            "vision_and_prefill": (base["vision_ms"] + base["prefill_ms"])
            / (pruned["vision_ms"] + pruned["prefill_ms"]),
            "time_to_first_token": base["time_to_first_token_ms"] / pruned["time_to_first_token_ms"],
            "decode_tokens_per_s": pruned["decode_tokens_per_s"] / base["decode_tokens_per_s"],
        }
    return speedups


def format_report(report: dict[str, Any]) -> str:
    rows = [
        [
            r["backend"],
            r["keep"],
            f"{r['median']['vision_ms']:.2f}",
            f"{r['median']['prefill_ms']:.2f}",
            f"{r['median']['time_to_first_token_ms']:.2f}",
            f"{r['median']['decode_tokens_per_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
        ]
        for r in report["results"]
    ]
    headers = ["backend", "keep", "vision ms", "prefill ms", "TTFT ms", "decode tok/s", "peak RSS MiB"]
    settings = report["settings"]
    lines = [
        f"{report['model']}: T = {settings['prompt_tokens']} prompt tokens, {settings['max_new_tokens']} new tokens, "
        f"median of {settings['runs']} runs after {settings['warmup']} warm-up",
        tabulate(rows, headers=headers, disable_numparse=True),
    ]
    flops = report["flops"]
    predicted = flops["predicted_speedup"]
    lines.append(
        f"\nprefill GFLOPs: LM {flops['lm_prefill']['reference_keep'] / 1e9:.3f} (keep {flops['reference_keep']}) -> "
        f"{flops['lm_prefill']['keep'] / 1e9:.3f} (keep {flops['keep']}); vision encoder {flops['vision'] / 1e9:.3f}"
    )
    if report["speedups"]:
        rows = [
            [
                backend,
                f"{s['prefill']:.2f}x",
                f"{predicted['lm_prefill']:.2f}x",
                f"{s['vision_and_prefill']:.2f}x",
                f"{s['time_to_first_token']:.2f}x",
                f"{predicted['end_to_end']:.2f}x",
                f"{s['decode_tokens_per_s']:.2f}x",
            ]
            for backend, s in report["speedups"].items()
        ]
        headers = [
            "backend",
            "prefill",
            "predicted (LM FLOPs)",
            "vision+prefill",
            "TTFT",
            "predicted (vision+LM FLOPs)",
            "decode tok/s",
        ]
        lines += ["speed-up, baseline / pruned:", tabulate(rows, headers=headers, disable_numparse=True)]
    else:
        lines.append(
            f"predicted speed-up vs keep {flops['reference_keep']}: LM prefill {predicted['lm_prefill']:.2f}x, "
            f"end to end {predicted['end_to_end']:.2f}x (pass --baseline to measure it)"
        )
    return "\n".join(lines)


def default_json_path(report: dict[str, Any]) -> Path:
    artifacts = report["artifacts"]
    name = f"runtime-{report['model']}-keep{artifacts['pruned']['keep']}"
    if "baseline" in artifacts:
        name += f"-vs-keep{artifacts['baseline']['keep']}"
    return RESULTS_DIR / f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--baseline", type=Path, help="artifact folder to compare with (e.g. keep = N, unpruned)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: every backend both artifacts hold")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its choice)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--json", type=Path, help="default: bench/results/runtime-<model>-keep<R>[-vs-keep<B>].json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_bench(
            args.artifact_dir,
            baseline_dir=args.baseline,
            backends=args.backends,
            runs=args.runs,
            warmup=args.warmup,
            max_new_tokens=args.max_new_tokens,
            num_threads=args.threads,
            prompt=args.prompt,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    path = args.json or default_json_path(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
