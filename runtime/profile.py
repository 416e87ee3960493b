"""Where an ONNX Runtime generation spends its time, operator type by operator type (ONNX Runtime's profiler).

    python -m runtime.profile ARTIFACT_DIR [--max-new-tokens 8] [--warmup 1] [--threads N] [--prompt TEXT]
        [--json FILE]

Runs generations of the artifact's sample input with every session profiled (ONNX Runtime
profiles a session from its start), then sums, over the runs of the last generation only, the
kernel time of each operator type per graph (prefill, decode, ...). The warm-up generations
take the first touch of the weights' pages and of the allocations. Per graph, the time outside
any kernel (ONNX Runtime copying the feeds and fetches, allocating) is the gap between its runs'
total and the kernels' sum. Prints a table; writes JSON (default under bench/results/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from tabulate import tabulate

from runtime.artifact import load_artifact
from runtime.cli import EXIT_OK, RESULTS_DIR, HelpFormatter, run_cli, write_report
from runtime.generate import GenerationConfig, Runner
from runtime.samples import DEFAULT_PROMPT

KERNEL_SUFFIX = "_kernel_time"  # ONNX Runtime's name for a node's compute event
CONTROL_FLOW = ("Scan", "Loop", "If")  # operators that run subgraphs
TOP = 10  # operator types listed per graph; the rest summed in one row


def profile(
    artifact_dir: str | Path,
    *,
    max_new_tokens: int = 8,
    warmup: int = 1,
    num_threads: int | None = None,
    prompt: str = DEFAULT_PROMPT,
) -> dict[str, Any]:
    """`warmup` + 1 profiled generations on ONNX Runtime; per graph, the last one's runs and time per operator type."""
    from runtime.backends.onnx import OnnxSession  # imports onnxruntime

    artifact = load_artifact(artifact_dir, verify=False)
    with tempfile.TemporaryDirectory() as folder:
        session = OnnxSession(artifact, num_threads=num_threads, profile_dir=Path(folder))
        runner = Runner(artifact, "onnx", session=session)
        config = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
        for _ in range(warmup + 1):
            result = runner.generate(runner.inputs.family.sample(), prompt, config)
        graphs = {
            graph: summarize(json.loads(trace.read_text()), generations=warmup + 1)
            for graph, trace in session.end_profiling().items()
        }
    return {
        "artifact": str(artifact_dir),
        "model": artifact.model_name,
        "keep": artifact.keep,
        "quantization": artifact.quantization,
        "onnx_profile": artifact.onnx_profile,
        "max_new_tokens": max_new_tokens,
        "warmup": warmup,
        "prompt_tokens": result.stats.num_prompt_tokens,
        "graphs": graphs,
    }


def summarize(trace: list[dict[str, Any]], *, generations: int = 1) -> dict[str, Any]:
    """The last of `generations` equal generations in a trace: its runs (count, total ms) and its
    kernels' time per operator type (ms, calls), largest first.

    A control-flow node's time (the selection's Scan) holds its body's, whose nodes the trace lists
    too: a kernel that runs within a control-flow kernel's span is left out. The graph's own nodes
    are matched by time, not by name: ONNX Runtime's fusions name new nodes.
    """
    runs = sorted((e["ts"], e["dur"]) for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    runs = runs[len(runs) - len(runs) // generations :]
    start = runs[0][0] if runs else float("inf")
    kernels = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith(KERNEL_SUFFIX) and e["ts"] >= start]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if e["args"]["op_name"] in CONTROL_FLOW]
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in kernels:
        own = (event["ts"], event["ts"] + event["dur"])
        if not any(a <= own[0] and own[1] <= b and (a, b) != own for a, b in spans):
            op = ops[event["args"]["op_name"]]
            op[0] += event["dur"] / 1000.0
            op[1] += 1
    ordered = sorted(ops.items(), key=lambda item: -item[1][0])
    return {
        "runs": len(runs),
        "run_ms": sum(duration for _, duration in runs) / 1000.0,
        "kernel_ms": sum(ms for ms, _ in ops.values()),
        "ops": {name: {"ms": ms, "calls": calls} for name, (ms, calls) in ordered},
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']} keep {report['keep']} ({report['quantization']}, ONNX {report['onnx_profile']} profile): "
        f"{report['prompt_tokens']} prompt tokens, {report['max_new_tokens']} new tokens, the generation after "
        f"{report['warmup']} warm-up"
    ]
    for graph, summary in report["graphs"].items():
        if not summary["runs"]:
            continue
        per_run, run_ms = summary["runs"], summary["run_ms"]
        rows = [
            [op, f"{s['ms']:.1f}", f"{s['ms'] / per_run:.2f}", f"{100 * s['ms'] / run_ms:.1f} %", s["calls"] // per_run]
            for op, s in list(summary["ops"].items())[:TOP]
        ]
        rest = list(summary["ops"].values())[TOP:]
        if rest:
            rest_ms = sum(s["ms"] for s in rest)
            rows.append(["(other kernels)", f"{rest_ms:.1f}", f"{rest_ms / per_run:.2f}", f"{100 * rest_ms / run_ms:.1f} %", ""])
        outside = run_ms - summary["kernel_ms"]
        rows.append(["(outside kernels)", f"{outside:.1f}", f"{outside / per_run:.2f}", f"{100 * outside / run_ms:.1f} %", ""])
        lines += [
            f"\n{graph}: {per_run} run(s), {run_ms:.1f} ms",
            tabulate(rows, headers=["operator", "ms", "ms per run", "of the graph", "nodes per run"], disable_numparse=True),
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.profile", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated (EOS ignored)")
    parser.add_argument("--warmup", type=int, default=1, help="generations before the one summarized")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its choice)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the image")
    parser.add_argument("--json", type=Path, help="default: bench/results/profile-<model>-keep<R>.json")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.warmup < 0:
        raise ValueError(f"need --max-new-tokens >= 1 and --warmup >= 0, got {args.max_new_tokens} and {args.warmup}")
    report = profile(
        args.artifact_dir, max_new_tokens=args.max_new_tokens, warmup=args.warmup, num_threads=args.threads,
        prompt=args.prompt,
    )
    print(format_report(report))
    write_report(report, args.json or RESULTS_DIR / f"profile-{report['model']}-keep{report['keep']}.json")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
