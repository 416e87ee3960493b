"""`make bench-anchors`: our artifacts next to the runtimes a user would otherwise pick, in one run.

    python -m bench.anchors --model llava-1.5-7b --random-weights [--keep 64]
        [--anchors onnxruntime_genai executorch_llama llama_cpp] [-o artifacts] [-- RUNTIME.BENCH FLAGS]

On the same machine and the same architecture (the model's language model, random weights, int4):
our unpruned and keep-R artifacts on each backend (`runtime.bench`, which measures the machine's
limits first), then each anchor given the same number of prompt tokens as our unpruned prefill
(text only: none of them has a LLaVA pipeline), built once under `<output>/anchors/<model>/` from one
checkpoint (`bench.anchors.checkpoint`). Prints the table and the targets of issue #13; writes
bench/results/anchors-<model>[-vision-int8][-<onnx profile>].json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.anchors import ANCHORS, Anchor
from bench.anchors.environment import ROOT, anchor_python
from bench.artifacts import add_artifact_flags, ensure_artifact, num_image_tokens
from runtime.bench import run_bench
from runtime.cli import (
    EXIT_OK, RESULTS_DIR, HelpFormatter, import_torch_quietly, raise_for_exit_status, run_cli, write_report,
)
from runtime.measure import add_timing_flags

logger = logging.getLogger(__name__)

BUILT = ".built"  # in an anchor's folder once its build finished
CHECKPOINT = "checkpoint"
# Issue #13's targets.
PREFILL_WITHIN = 1.15  # our unpruned prefill / the fastest anchor of the same backend family
TTFT_FASTER = 3.0  # every anchor's unpruned TTFT / our pruned TTFT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.anchors", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add_artifact_flags(parser)
    parser.set_defaults(quantize="int4")  # what every anchor runs: our artifacts the same
    parser.add_argument("--keep", type=int, default=64, help="our pruned artifact's keep count")
    parser.add_argument("--anchors", nargs="+", choices=list(ANCHORS), default=list(ANCHORS))
    add_timing_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import_torch_quietly()
    # Every runtime on every core (ONNX Runtime GenAI's own default is half of them).
    threads = args.threads or os.cpu_count()
    pruned = ensure_artifact(args, args.keep)
    unpruned = ensure_artifact(args, num_image_tokens(args))
    ours = run_bench(
        [pruned],
        baseline_dir=unpruned,
        runs=args.runs,
        warmup=args.warmup,
        max_new_tokens=args.max_new_tokens,
        num_threads=threads,
        prompt=args.prompt,
        backends=args.backends.split(",") if args.backends else None,
        allow_failed_parity=args.allow_failed_parity,
    )
    prompt_tokens = ours["settings"]["prompt_tokens"]
    folder = (args.output_dir / "anchors" / args.model).resolve()  # the anchors' tools run in folders of their own
    checkpoint = _checkpoint(args.model, folder / CHECKPOINT)
    vocab_size = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    flags = ["--prompt-tokens", str(prompt_tokens), "--vocab-size", str(vocab_size), "--threads", str(threads)]
    flags += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--max-new-tokens", str(args.max_new_tokens)]
    anchors = {}
    for name in args.anchors:
        anchor = ANCHORS[name]
        try:  # one anchor that cannot be built here (memory) or fails leaves the others' rows
            python = anchor_python(name, list(anchor.requirements))
            work = _built(anchor, python, checkpoint, folder / name)
            logger.info("measuring %s (%d prompt tokens)", anchor.label, prompt_tokens)
            measured = json.loads(_run_anchor(anchor, python, "measure", ["--work", str(work), *flags]).splitlines()[-1])
        except (RuntimeError, ValueError) as error:
            logger.error("%s: %s", anchor.label, error)
            measured = {"error": str(error)}
        anchors[name] = {"label": anchor.label, **measured}
    report = {"model": args.model, "ours": ours, "anchors": anchors, "targets": targets(ours, anchors)}
    print(format_report(report))
    variant = f"-vision-{args.quantize_vision}" if args.quantize_vision not in (None, "none") else ""
    variant += f"-{args.onnx_profile}" if args.onnx_profile else ""
    write_report(report, RESULTS_DIR / f"anchors-{args.model}{variant}.json")
    return EXIT_OK


def _checkpoint(model: str, path: Path) -> Path:
    """The model's language model as a Hugging Face checkpoint, written once."""
    if not (path / "config.json").is_file():
        from bench.anchors.checkpoint import write_checkpoint

        logger.info("writing %s's language model with random weights to %s (once)", model, path)
        write_checkpoint(model, path)
    return path


def _built(anchor: Anchor, python: Path, checkpoint: Path, work: Path) -> Path:
    """The anchor's artifact, built from `checkpoint` unless a finished build is there."""
    if not (work / BUILT).is_file():
        logger.info("building %s's artifact in %s (once)", anchor.label, work)
        _run_anchor(anchor, python, "build", ["--checkpoint", str(checkpoint), "--work", str(work)])
        (work / BUILT).touch()
    return work


def _run_anchor(anchor: Anchor, python: Path, command: str, flags: list[str]) -> str:
    """Run one job of an anchor in its interpreter; its stdout. Its stderr (progress) passes through."""
    done = subprocess.run([str(python), "-m", anchor.module, command, *flags], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    raise_for_exit_status(done.returncode, f"{anchor.label}: {command} failed (exit {done.returncode}); see above")
    return done.stdout


def targets(ours: dict[str, Any], anchors: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #13's three targets, each with its measured ratio: per backend of ours against each measured anchor."""
    anchors = {name: a for name, a in anchors.items() if "error" not in a}
    rows = []
    for r in ours["results"]:
        if r["role"] != "baseline":
            continue
        family = [a for name, a in anchors.items() if ANCHORS[name].family == r["backend"]]
        if family:
            fastest = min(a["median"]["prefill_ms"] for a in family)
            ratio = r["median"]["prefill_ms"] / fastest
            rows.append({"target": f"unpruned prefill within {PREFILL_WITHIN:.2f}x of the fastest {r['backend']} anchor",
                         "backend": r["backend"], "ratio": ratio, "met": ratio <= PREFILL_WITHIN})
    for r in ours["results"]:
        if r["role"] != "pruned":
            continue
        for a in anchors.values():
            ttft = a["median"]["time_to_first_token_ms"] / r["median"]["time_to_first_token_ms"]
            rows.append({"target": f"keep {r['keep']} TTFT {TTFT_FASTER:.0f}x faster than {a['label']}'s unpruned",
                         "backend": r["backend"], "ratio": ttft, "met": ttft >= TTFT_FASTER})
            decode = r["median"]["decode_tokens_per_s"] / a["median"]["decode_tokens_per_s"]
            rows.append({"target": f"keep {r['keep']} decode at least {a['label']}'s", "backend": r["backend"],
                         "ratio": decode, "met": decode >= 1.0})
    return rows


def format_report(report: dict[str, Any]) -> str:
    ours = report["ours"]
    settings = ours["settings"]
    rows = [
        [f"ours, {r['backend']}", r["keep"], settings["prompt_tokens"], f"{r['median']['vision_ms']:.0f}",
         f"{r['median']['prefill_ms']:.0f}", f"{r['median']['time_to_first_token_ms']:.0f}",
         f"{r['median']['decode_tokens_per_s']:.2f}", f"{r['peak_rss_mib']:.0f}"]
        for r in ours["results"]
    ]
    rows += [
        [a["label"], "-", a["median"]["num_prompt_tokens"], "-", f"{a['median']['prefill_ms']:.0f}",
         f"{a['median']['time_to_first_token_ms']:.0f}", f"{a['median']['decode_tokens_per_s']:.2f}",
         f"{a['peak_rss_mib']:.0f}"]
        if "error" not in a else [a["label"], "-", "-", "-", "failed: " + a["error"].splitlines()[0], "", "", ""]
        for a in report["anchors"].values()
    ]
    headers = ["runtime", "keep", "prompt tokens", "vision ms", "prefill ms", "TTFT ms", "decode tok/s", "peak RSS MiB"]
    checks = [[t["target"], t["backend"], f"{t['ratio']:.2f}x", "met" if t["met"] else "NOT met"] for t in report["targets"]]
    return "\n".join([
        f"{report['model']} language model, {ours['quantization']} weights; our TTFT includes the vision encoder "
        f"({ours['vision_quantization'].replace('none', 'float32')} weights), "
        f"the anchors' prompts are text only; median of {settings['runs']} runs after {settings['warmup']} warm-up, "
        f"{settings['max_new_tokens']} new tokens",
        tabulate(rows, headers=headers, disable_numparse=True),
        "",
        tabulate(checks, headers=["target", "ours on", "measured", ""], disable_numparse=True),
    ])


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
