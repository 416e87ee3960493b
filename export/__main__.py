"""Export a registered model with VLM-Pruner inside the prefill graph to ONNX and/or ExecuTorch.

    python -m export [-m MODEL] [--keep R | --rate r] [--backends onnx,executorch]
                     [--model-path DIR | --random-weights [--seed S]] [--quantize none|int4|int8]
                     [-o DIR] [--max-seq-len M] [--skip-parity]

Writes `<output-dir>/<model>/keep<R>/` (layout in export/ARTIFACTS.md), then runs the parity
check of the artifact against the eager model (`runtime.parity`) and stores its results in the
manifest. Exit status: 0 on success, 1 when the parity check fails (the artifact is kept),
2 on a usage error (bad flags, missing weights, unwritable output folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from export.config import DEFAULT_MAX_SEQ_LEN, DEFAULT_MODEL, DEFAULT_RATE, Backend, ExportConfig
from export.manifest import read_manifest, update_manifest
from export.memory import check_fits, describe_misfit
from export.pipeline import ExportPipeline
from models import MODEL_SPECS, PrunedLlava
from models.quantize import Quantization
from runtime.measure import peak_rss_mib

logger = logging.getLogger("export")

BACKEND_CHOICES = tuple(backend.value for backend in Backend)


class _BackendsAction(argparse.Action):
    """--backends onnx,executorch, or --backends onnx --backends executorch: the union, in order."""

    def __call__(self, parser, namespace, values, option_string=None):
        chosen = list(getattr(namespace, self.dest) or [])
        for value in values.split(","):
            value = value.strip()
            if value not in BACKEND_CHOICES:
                choices = ", ".join(BACKEND_CHOICES)
                parser.error(f"argument --backends: invalid choice {value!r} (choose from {choices})")
            if value not in chosen:
                chosen.append(value)
        setattr(namespace, self.dest, chosen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a vision-language model with VLM-Pruner token pruning inside the graph.",
    )
    parser.add_argument(
        "-m",
        "--model",
        choices=sorted(MODEL_SPECS),
        default=DEFAULT_MODEL,
        help=f"registered model (default {DEFAULT_MODEL})",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--keep", type=int, metavar="R", help="image tokens kept, 1..N; N exports the unpruned baseline"
    )
    amount.add_argument(
        "--rate",
        type=float,
        metavar="r",
        help=f"pruning rate in [0, 1), R = round(N * (1 - r)) (default {DEFAULT_RATE})",
    )
    parser.add_argument(
        "--backends",
        action=_BackendsAction,
        metavar="{" + ",".join(BACKEND_CHOICES) + "}",
        help="comma-separated or repeated (default: every backend whose export fits this machine's memory)",
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        metavar="DIR",
        help="checkpoint folder (default: $MODEL_PATH, then the Hugging Face cache; tiny-llava: built on demand)",
    )
    parser.add_argument(
        "-o", "--output-dir", type=Path, default=Path("artifacts"), metavar="DIR", help="default: artifacts"
    )
    parser.add_argument(
        "--max-seq-len",
        type=int,
        metavar="M",
        help=f"longest prompt + answer the graphs accept (default {DEFAULT_MAX_SEQ_LEN}, capped by the model)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="the architecture with random weights, no checkpoint needed (manifest: source random)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    parser.add_argument(
        "--quantize",
        choices=[q.value for q in Quantization],
        help="weights of the language model's linears: int4 (ONNX Runtime MatMulNBits, ExecuTorch 8da4w), "
        "int8, none (float32) (default: the model's, int4 for LLaVA-1.5-7B and 13B)",
    )
    parser.add_argument("--skip-parity", action="store_true", help="do not run the parity check after the export")
    return parser


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    config = ExportConfig(
        model=args.model,
        keep=args.keep,
        rate=args.rate,
        backends=tuple(args.backends or BACKEND_CHOICES),
        model_path=args.model_path,
        output_dir=args.output_dir,
        max_seq_len=args.max_seq_len,
        quantization=args.quantize,
        random_weights=args.random_weights,
        seed=args.seed,
    )
    if args.backends:
        return config
    # No backend named: every backend whose export fits this machine (the pipeline refuses a named one).
    misfits = check_fits(config.spec, config.quantization, [backend.value for backend in config.backends])
    if misfits:
        fitting = tuple(backend for backend in config.backends if backend.value not in misfits)
        if not fitting:
            raise ValueError(describe_misfit(config.spec, config.quantization, misfits))
        logger.warning("%s: skipping %s", describe_misfit(config.spec, config.quantization, misfits), ", ".join(misfits))
        config = replace(config, backends=fitting)
    return config


def run_parity(pipeline: ExportPipeline, artifact_dir: Path) -> dict[str, Any]:
    """The parity check of the fresh artifact against the already loaded eager model (`runtime.parity`).

    Only this driver imports the runtime: the export library itself does not depend on it.
    """
    from runtime.parity import check_parity, format_report

    config = pipeline.config
    backends = [backend.value for backend in config.backends]
    # Handed over, not shared: check_parity frees the eager model before the runtimes load the artifact.
    report = check_parity(artifact_dir, backends=backends, reference=_take_reference(pipeline))
    print(format_report(report))
    return report.to_dict()


def _take_reference(pipeline: ExportPipeline) -> PrunedLlava:
    """The eager model of the export as a `PrunedLlava`; the pipeline lets go of it."""
    loaded, config = pipeline.loaded, pipeline.config
    pipeline.loaded = None
    return PrunedLlava(loaded.model, loaded.processor, loaded.spec, keep=config.keep_count, pruner_config=config.pruner)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))

    pipeline = ExportPipeline(config)
    try:
        artifact_dir = pipeline.run()
    except (FileNotFoundError, PermissionError, ValueError, MemoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.skip_parity:
        logger.info("parity check skipped")
        return 0

    logger.info("parity ...")
    start = time.perf_counter()
    parity = run_parity(pipeline, artifact_dir)
    seconds = time.perf_counter() - start
    manifest = read_manifest(artifact_dir)
    update_manifest(
        artifact_dir,
        parity=parity,
        export_seconds={**manifest["export_seconds"], "parity": round(seconds, 3)},
        peak_rss_mib={**manifest["peak_rss_mib"], "parity": round(peak_rss_mib(), 1)},
    )
    logger.info("parity done in %.1f s: %s", seconds, "passed" if parity["passed"] else "FAILED")
    return 0 if parity["passed"] else 1


def _configure_logging() -> None:
    """Progress of the export and of the parity check on stdout; other libraries keep their own settings."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    for name in ("export", "runtime"):
        package_logger = logging.getLogger(name)
        package_logger.setLevel(logging.INFO)
        package_logger.addHandler(handler)
        # Imported libraries configure the root logger (ExecuTorch at import): do not print twice.
        package_logger.propagate = False


if __name__ == "__main__":
    _configure_logging()
    sys.exit(main())
