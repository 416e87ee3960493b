"""Benchmark pruned artifacts next to an unpruned one, on each backend.

    python -m runtime.bench ARTIFACT_DIR [ARTIFACT_DIR ...] [--baseline UNPRUNED_DIR]
        [--backends onnx executorch] [--runs 5] [--warmup 1] [--max-new-tokens 32] [--threads N] [--low-memory]
        [--json FILE]

Artifacts of several selection methods at the same keep stand side by side (a `method` column;
speed-ups are keyed by backend, method, keep; FLOP predictions by method, keep). Each (artifact, backend) runs in a fresh process
(`runtime.measure`): medians over the runs after
the warm-up of the vision encoder time, prefill time, time to first token and decode tokens/s,
and the process's peak resident memory (RSS) and its physical memory after the runs (PSS, which
counts once the prepacked weights prefill and decode both map). Beside each measured speed-up over the baseline stands
the one the prefill matmul FLOPs predict (`runtime.flops`), so that a reader sees how much of the
possible gain the runtime turns into time; beside the memory, the KV cache the keep count leaves.
Beside each time, the fraction of this machine's limit it reaches (`runtime.limits`, measured first,
a few seconds): the prefill's LM FLOP rate against the GEMM peak of its arithmetic (float32, or
int8 for ExecuTorch's quantized linears and ONNX Runtime's fast profile), decode tokens/s against
the bandwidth bound of reading the weights and KV cache once per token.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from runtime.artifact import Artifact, load_artifact
from runtime.backends import BACKENDS
from runtime.cli import EXIT_OK, RESULTS_DIR, HelpFormatter, raise_for_exit_status, run_cli, write_report
from runtime.flops import ModelDims, kv_cache_bytes, lm_prefill_flops, lm_weight_bytes
from runtime.limits import MachineLimits, measure_limits
from runtime.measure import add_timing_flags
from runtime.samples import DEFAULT_PROMPT

logger = logging.getLogger(__name__)

MIB = 2**20


def run_bench(
    artifact_dirs: Sequence[str | os.PathLike],
    *,
    baseline_dir: str | os.PathLike | None = None,
    backends: list[str] | None = None,
    runs: int = 5,
    warmup: int = 1,
    max_new_tokens: int = 32,
    num_threads: int | None = None,
    prompt: str = DEFAULT_PROMPT,
    low_memory: bool = False,
    allow_failed_parity: bool = False,
) -> dict[str, Any]:
    """Measure the artifacts (and the baseline) on each backend; return the JSON-ready results.

    Raises:
        ValueError: no artifact, artifacts of different models, quantizations (of the language model or the vision tower) or ONNX profiles,
            or a backend one of them lacks.
    """
    if runs < 1 or warmup < 0 or max_new_tokens < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, max_new_tokens >= 1; got {runs}, {warmup}, {max_new_tokens}")
    if not artifact_dirs:
        raise ValueError("no artifact to measure")
    pruned = [load_artifact(path) for path in artifact_dirs]
    baseline = load_artifact(baseline_dir) if baseline_dir is not None else None
    everything = pruned + ([baseline] if baseline is not None else [])
    kinds = {(a.model_name, a.quantization, a.vision_quantization, a.onnx_profile) for a in everything}
    if len(kinds) > 1:
        raise ValueError(
            f"the artifacts are of different models or quantizations (language model, vision tower) or ONNX profiles: {sorted(kinds)}"
        )
    if backends is None:
        backends = [b for b in BACKENDS if all(b in a.backends for a in everything)]
    if not backends:
        raise ValueError("the artifacts hold no backend in common")
    for artifact in everything:
        for backend in backends:
            artifact.require_backend(backend)

    logger.info("measuring this machine's limits (GEMM rates, memory bandwidth)")
    limits = measure_limits()
    options = ["--runs", str(runs), "--warmup", str(warmup), "--max-new-tokens", str(max_new_tokens)]
    options += ["--prompt", prompt] + (["--threads", str(num_threads)] if num_threads is not None else [])
    options += ["--low-memory"] if low_memory else []
    options += ["--allow-failed-parity"] if allow_failed_parity else []
    roles = [("pruned", a) for a in pruned] + ([("baseline", baseline)] if baseline is not None else [])
    results = []
    for backend in backends:
        for role, artifact in roles:
            logger.info("measuring %s keep %d (%s) on %s", artifact.model_name, artifact.keep, artifact.method, backend)
            result = _measure_in_subprocess(artifact.root, backend, options)
            # T with all N image tokens (the same prompt for every artifact), also where the vision
            # graph left only R of them in the prompt.
            prompt_tokens = result["median"]["num_prompt_tokens"] + artifact.num_image_tokens - artifact.prompt_image_tokens
            cache = kv_cache_bytes(
                ModelDims.from_manifest(artifact.manifest),
                prompt_tokens=prompt_tokens,
                keep=artifact.keep,
                new_tokens=max_new_tokens,
            )
            results.append(
                {
                    "role": role,
                    **result,
                    "kv_cache_mib": cache / MIB,
                    "of_limits": of_limits(artifact, backend, result["median"], limits, prompt_tokens, max_new_tokens),
                }
            )

    reference_keep = baseline.keep if baseline is not None else pruned[0].num_image_tokens
    flops: dict[str, dict[int, Any]] = {}
    for artifact in pruned:
        flops.setdefault(artifact.method, {})[artifact.keep] = flop_prediction(
            artifact, prompt_tokens=prompt_tokens, reference_keep=reference_keep
        )
    return {
        "model": pruned[0].model_name,
        "quantization": pruned[0].quantization,
        "vision_quantization": pruned[0].vision_quantization,
        "onnx_profile": pruned[0].onnx_profile,
        "artifacts": {"pruned": [_describe(a) for a in pruned]}
        | ({"baseline": _describe(baseline)} if baseline is not None else {}),
        "settings": {
            "runs": runs,
            "warmup": warmup,
            "max_new_tokens": max_new_tokens,
            "threads": num_threads,
            "low_memory": low_memory,
            "allow_failed_parity": allow_failed_parity,
            "prompt": prompt,
            "prompt_tokens": prompt_tokens,
        },
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "limits": limits.to_dict(),
        "flops": flops,
        "results": results,
        "speedups": _speedups(results) if baseline is not None else {},
    }


def compute_kind(artifact: Artifact, backend: str) -> str:
    """The arithmetic of the language model's linears: "int8" (ExecuTorch's 8da4w / 8da8w, ONNX
    Runtime's fast profile) or "float32"."""
    return "int8" if artifact.quantizes_activations(backend) else "float32"


def of_limits(
    artifact: Artifact, backend: str, median: dict[str, float], limits: MachineLimits, prompt_tokens: int, new_tokens: int
) -> dict[str, float]:
    """How close a run came to the machine: the prefill's LM FLOPs per second against the GEMM
    rate of its arithmetic, and decode tokens/s against the bandwidth bound (weights and half the
    generation's KV cache read once per token)."""
    dims = ModelDims.from_manifest(artifact.manifest)
    kind = compute_kind(artifact, backend)
    peak = limits.int8_gops if kind == "int8" else limits.float32_gflops
    flops = lm_prefill_flops(dims, prompt_tokens=prompt_tokens, keep=artifact.keep)
    prefill_rate = flops / (median["prefill_ms"] / 1000) / 1e9
    read = lm_weight_bytes(dims, quantization=artifact.quantization, backend=backend) + kv_cache_bytes(
        dims, prompt_tokens=prompt_tokens, keep=artifact.keep, new_tokens=new_tokens // 2
    )
    bound = limits.read_gbps * 1e9 / read  # tokens/s if a step only read its bytes
    return {
        "compute": kind,
        "prefill_gflops": prefill_rate,
        "prefill_of_peak": prefill_rate / peak,
        "decode_bound_tokens_per_s": bound,
        "decode_of_bound": median["decode_tokens_per_s"] / bound,
    }


def flop_prediction(artifact: Artifact, *, prompt_tokens: int, reference_keep: int) -> dict[str, Any]:
    """Prefill FLOPs at the artifact's keep and at `reference_keep`, and the speed-ups they predict."""
    dims = ModelDims.from_manifest(artifact.manifest)
    vision = dims.vision_flops
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


def _describe(artifact: Artifact) -> dict[str, Any]:
    return {"path": str(artifact.root), "keep": artifact.keep, "method": artifact.method}


def _measure_in_subprocess(root: Path, backend: str, options: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "runtime.measure", str(root), "--backend", backend, *options]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    # The child said what went wrong in its last line (`runtime.cli`); a crash says nothing.
    lines = done.stderr.strip().splitlines()
    said = lines[-1].removeprefix("error: ") if lines else f"no message, exit status {done.returncode}"
    raise_for_exit_status(done.returncode, f"measuring {root} on {backend} failed: {said}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _speedups(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """{backend: {method: {keep: baseline / pruned}}}: time ratios (> 1: pruned is faster) and the
    decode rate ratio."""
    base = {r["backend"]: r["median"] for r in results if r["role"] == "baseline"}
    speedups: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for r in results:
        if r["role"] != "pruned":
            continue
        b, p = base[r["backend"]], r["median"]
        speedups.setdefault(r["backend"], {}).setdefault(r["method"], {})[r["keep"]] = {
            "vision": b["vision_ms"] / p["vision_ms"],
            "prefill": b["prefill_ms"] / p["prefill_ms"],
            "vision_and_prefill": (b["vision_ms"] + b["prefill_ms"]) / (p["vision_ms"] + p["prefill_ms"]),
            "time_to_first_token": b["time_to_first_token_ms"] / p["time_to_first_token_ms"],
            "decode_tokens_per_s": p["decode_tokens_per_s"] / b["decode_tokens_per_s"],
        }
    return speedups


def _profile_note(report: dict[str, Any]) -> str:
    """", ONNX fast profile" when the quantized ONNX graphs compute in int8, ", int8 vision tower" when
    it is quantized (the defaults say nothing)."""
    note = ", ONNX fast profile" if report["quantization"] != "none" and report["onnx_profile"] == "fast" else ""
    return note + (f", {report['vision_quantization']} vision tower" if report["vision_quantization"] != "none" else "")


def format_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"{report['model']} ({report['quantization']} weights{_profile_note(report)}): "
        f"T = {settings['prompt_tokens']} prompt tokens, "
        f"{settings['max_new_tokens']} new tokens, median of {settings['runs']} runs after {settings['warmup']} warm-up",
    ]
    rows = [
        [
            r["backend"],
            r["method"],
            r["keep"],
            f"{r['median']['vision_ms']:.1f}",
            f"{r['median']['prefill_ms']:.1f}",
            f"{r['median']['time_to_first_token_ms']:.1f}",
            f"{r['median']['decode_tokens_per_s']:.2f}",
            f"{r['kv_cache_mib']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            "-" if r.get("pss_after_mib") is None else f"{r['pss_after_mib']:.0f}",
            f"{100 * r['of_limits']['prefill_of_peak']:.0f} % {r['of_limits']['compute']}",
            f"{100 * r['of_limits']['decode_of_bound']:.0f} %",
        ]
        for r in report["results"]
    ]
    headers = ["backend", "method", "keep", "vision ms", "prefill ms", "TTFT ms", "decode tok/s", "KV cache MiB", "peak RSS MiB"]
    headers += ["PSS after MiB", "prefill of GEMM peak", "decode of bandwidth bound"]
    lines.append(tabulate(rows, headers=headers, disable_numparse=True))
    lines += [
        f"note: {r['backend']} keep {r['keep']} FAILED its parity check at export (timed with --allow-failed-parity)"
        for r in report["results"]
        if r.get("parity") == "failed"
    ]
    limits = report["limits"]
    lines.append(
        f"machine: float32 GEMM {limits['float32_gflops']:.0f} GFLOP/s, int8 GEMM {limits['int8_gops']:.0f} GOP/s, "
        f"memory read {limits['read_gbps']:.1f} GB/s (runtime.limits)"
    )
    if report["speedups"]:
        rows = []
        for backend, by_method in report["speedups"].items():
            for method, by_keep in by_method.items():
                for keep, s in by_keep.items():
                    predicted = report["flops"][method][keep]["predicted_speedup"]
                    rows.append(
                        [
                            backend,
                            method,
                            keep,
                            f"{s['prefill']:.2f}x",
                            f"{predicted['lm_prefill']:.2f}x",
                            f"{s['time_to_first_token']:.2f}x",
                            f"{predicted['end_to_end']:.2f}x",
                            f"{s['decode_tokens_per_s']:.2f}x",
                        ]
                    )
        headers = ["backend", "method", "keep", "prefill", "predicted (LM FLOPs)", "TTFT", "predicted (vision+LM)"]
        headers.append("decode tok/s")
        baseline = report["artifacts"]["baseline"]["keep"]
        lines += [f"\nspeed-up over keep {baseline}:", tabulate(rows, headers=headers, disable_numparse=True)]
    else:
        for method, by_keep in report["flops"].items():
            for keep, flops in by_keep.items():
                predicted = flops["predicted_speedup"]
                lines.append(
                    f"{method} keep {keep}: predicted speed-up vs keep {flops['reference_keep']}: LM prefill "
                    f"{predicted['lm_prefill']:.2f}x, end to end {predicted['end_to_end']:.2f}x (--baseline measures it)"
                )
    return "\n".join(lines)


def default_json_path(report: dict[str, Any]) -> Path:
    """bench/results/runtime-<model>-keep<R...>[-vs-keep<B>].json; a pruned artifact whose method is
    not the baseline's (without one: the first pruned artifact's) adds `-<method>` after its keep."""
    artifacts = report["artifacts"]
    usual = artifacts.get("baseline", artifacts["pruned"][0]).get("method")
    name = f"runtime-{report['model']}-keep" + "-".join(
        str(a["keep"]) + ("" if a.get("method") == usual else f"-{a['method']}") for a in artifacts["pruned"]
    )
    if "baseline" in artifacts:
        name += f"-vs-keep{artifacts['baseline']['keep']}"
    return RESULTS_DIR / f"{name}.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("artifact_dirs", type=Path, nargs="+", metavar="ARTIFACT_DIR")
    parser.add_argument("--baseline", type=Path, help="artifact folder to compare with (e.g. keep = N, unpruned)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: every backend all artifacts hold")
    add_timing_flags(parser)
    parser.add_argument("--json", type=Path, help="default: bench/results/runtime-<model>-keep<R...>[-vs-keep<B>].json")
    return parser


def run(args: argparse.Namespace) -> int:
    report = run_bench(
        args.artifact_dirs,
        baseline_dir=args.baseline,
        backends=args.backends,
        runs=args.runs,
        warmup=args.warmup,
        max_new_tokens=args.max_new_tokens,
        num_threads=args.threads,
        prompt=args.prompt,
        low_memory=args.low_memory,
        allow_failed_parity=args.allow_failed_parity,
    )
    print(format_report(report))
    write_report(report, args.json or default_json_path(report))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
