"""Export a registered model with VLM-Pruner inside the prefill graph to ONNX and/or ExecuTorch.

    python -m export [-m MODEL] [--keep R | --rate r] [--backends onnx,executorch]
                     [--model-path DIR | --random-weights [--seed S]] [--quantize none|int4|int8]
                     [--quantize-vision none|int8] [--onnx-profile exact|fast] [--image-size S] [--frames F] [-o DIR] [--max-seq-len M]
                     [--pte-layers-per-method L] [--skip-parity]
    python -m export --clean [-o DIR]

Writes `<output-dir>/<model>/keep<R>/` (layout in export/ARTIFACTS.md), then runs the parity
check of the artifact against the eager model (`runtime.parity`) and stores its results in the
manifest. `--clean` removes the staging folders that killed exports left under the output folder.
Exit status (`runtime.cli`): 0 on success, 1 when the parity check fails (the artifact is kept),
2 on bad input or environment (bad flags, missing weights, unwritable output folder, full disk,
another export of the same artifact running), 3 on an internal error, 130 when interrupted.

The flags are parsed before torch is imported (seconds), so that --help and usage errors answer at
once: the functions below import the export library when they run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.options import (
    DEFAULT_MAX_SEQ_LEN,
    DEFAULT_MODEL,
    DEFAULT_RATE,
    DEFAULT_TEXT_ROOM,
    METHOD_NAMES,
    MODEL_NAMES,
    QUANTIZATIONS,
    Backend,
)
from export.staging import format_bytes, remove_leftovers
from runtime.cli import EXIT_OK, EXIT_PARITY_FAILED, HelpFormatter, import_torch_quietly, run_cli
from runtime.contract import ONNX_PROFILES, VISION_QUANTIZATIONS

if TYPE_CHECKING:
    from export.config import ExportConfig
    from export.pipeline import ExportPipeline
    from runtime.eager import EagerModel

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


def _number(kind: type[int] | type[float], valid: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, refused unless `valid`, the error saying it must be `expected`."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a vision-language model with VLM-Pruner token pruning inside the graph.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-m",
        "--model",
        choices=MODEL_NAMES,
        default=DEFAULT_MODEL,
        metavar="MODEL",
        help=f"registered model: {', '.join(MODEL_NAMES)} (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--method",
        choices=METHOD_NAMES,
        default=METHOD_NAMES[0],
        help="token selection: VLM-Pruner or one of the paper's baselines, FastV and DART at the pruning layer "
        "(both read the question: the prompt's text after the image), DivPrune in the vision encoder graph "
        f"(the language model is fed only the kept tokens) (default {METHOD_NAMES[0]})",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--keep",
        # The upper bound, N, is the model's: `ExportConfig` checks it once the registry is imported.
        type=_number(int, lambda keep: keep >= 1, "at least 1"),
        metavar="R",
        help="image tokens kept, 1..N; N exports the unpruned baseline (default: from the default --rate)",
    )
    amount.add_argument(
        "--rate",
        type=_number(float, lambda rate: 0.0 <= rate < 1.0, "in [0, 1)"),
        metavar="r",
        help=f"pruning rate in [0, 1), R = round(N * (1 - r)) (default {DEFAULT_RATE})",
    )
    parser.add_argument(
        "--backends",
        action=_BackendsAction,
        metavar="{" + ",".join(BACKEND_CHOICES) + "}",
        help="comma-separated or repeated (default: every backend whose export fits this machine's memory)",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--model-path",
        type=Path,
        metavar="DIR",
        help="checkpoint folder (default: $MODEL_PATH, then the Hugging Face cache; tiny-*: "
        "build/models/<model>, built on demand)",
    )
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="the architecture with random weights, no checkpoint needed (manifest: source random)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    parser.add_argument(
        "-o", "--output-dir", type=Path, default=Path("artifacts"), metavar="DIR", help="(default artifacts)"
    )
    parser.add_argument(
        "--max-seq-len",
        type=int,
        metavar="M",
        help=f"longest prompt + answer the graphs accept (default {DEFAULT_MAX_SEQ_LEN}, or N + {DEFAULT_TEXT_ROOM} "
        "rounded up to 256 where more, capped by the model)",
    )
    parser.add_argument(
        "--image-size",
        type=_number(int, lambda size: size >= 1, "at least 1"),
        metavar="S",
        help="side of the square image the graphs take, every input image is resized to it "
        "(default: the model's; Qwen2-VL: any multiple of 28, default 672 for qwen2-vl-7b; LLaVA-1.5: 336 only)",
    )
    parser.add_argument(
        "--frames",
        type=_number(int, lambda frames: frames >= 1, "at least 1"),
        metavar="F",
        help="video frames one prompt takes, sampled uniformly from the input video (video models only; "
        "default: the model's, 16 for llava-video-7b)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="weights of the language model's linears: int4 (ONNX Runtime MatMulNBits, ExecuTorch 8da4w), "
        "int8, none (float32) (default: the model's, int4 for LLaVA-1.5-7B and 13B)",
    )
    parser.add_argument(
        "--quantize-vision",
        choices=VISION_QUANTIZATIONS,
        default=VISION_QUANTIZATIONS[0],
        help="weights of the vision tower's layers: none (float32) or int8 (8da8w per output channel, about 1.7x "
        "faster on XNNPACK, vision features no longer float32's; ExecuTorch only, the default backend then) "
        f"(default {VISION_QUANTIZATIONS[0]})",
    )
    parser.add_argument(
        "--onnx-profile",
        choices=ONNX_PROFILES,
        default=ONNX_PROFILES[0],
        help="how ONNX Runtime computes the quantized linears: exact (float32 on the dequantized weights, "
        "parity exact) or fast (int8 activations, about 1.3x faster prefill, parity statistical)",
    )
    parser.add_argument(
        "--pte-layers-per-method",
        type=_number(int, lambda layers: layers >= 1, "at least 1"),
        metavar="L",
        help="ExecuTorch: at most L decoder layers in one .pte method, lowered one method at a time; fewer "
        "lower in less memory (default: from the lowering's memory, e.g. 4 for LLaVA-1.5-7B int4; small "
        "models keep one text decoder)",
    )
    parser.add_argument(
        "--skip-parity", action="store_true", help="do not run the parity check after the export (default: run it)"
    )
    parser.add_argument(
        "--parity-steps",
        type=_number(int, lambda steps: steps >= 1, "at least 1"),
        metavar="N",
        help="greedy tokens the parity check compares (default: runtime.parity's, 16)",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="export nothing: remove the staging folders that killed exports left under --output-dir "
        "(never one a running export holds)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    """The export's configuration; without --backends, only the backends whose export fits this machine
    (and takes an int8 vision tower: ExecuTorch alone).

    Raises:
        ValueError: flags out of the model's range (`ExportConfig`), or no backend fits.
    """
    from dataclasses import replace

    from export.config import ExportConfig
    from export.memory import check_fits, describe_misfit

    config = ExportConfig(
        model=args.model,
        method=args.method,
        keep=args.keep,
        rate=args.rate,
        backends=tuple(args.backends) if args.backends else None,
        model_path=args.model_path,
        output_dir=args.output_dir,
        max_seq_len=args.max_seq_len,
        image_size=args.image_size,
        frames=args.frames,
        quantization=args.quantize,
        vision_quantization=args.quantize_vision,
        onnx_profile=args.onnx_profile,
        layers_per_method=args.pte_layers_per_method,
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


def run_parity(pipeline: ExportPipeline, steps: int | None = None) -> dict[str, Any]:
    """The parity check of the fresh artifact against the already loaded eager model (`runtime.parity`),
    over `steps` greedy tokens (default the check's).

    Only this driver imports the runtime's parity check: the export library itself does not depend on it.
    """
    from runtime.parity import DEFAULT_STEPS, check_parity, format_report

    backends = [backend.value for backend in pipeline.config.backends]
    # Handed over, not held here, so that check_parity frees the eager model before the runtimes load
    # the artifact: no name bound to it, and no `**kwargs` call, whose dict holds every argument
    # until the call returns (that kept 4.3 GB alive at Qwen2-VL-7B-3layers, measured).
    report = check_parity(
        pipeline.artifact_dir,
        backends=backends,
        reference=take_reference(pipeline),
        steps=DEFAULT_STEPS if steps is None else steps,
    )
    print(format_report(report))
    return report.to_dict()


def clean(output_dir: Path) -> int:
    """Remove the leftovers of killed exports in every model folder under `output_dir`."""
    folders = sorted(path for path in output_dir.iterdir() if path.is_dir()) if output_dir.is_dir() else []
    removed = [leftover for folder in folders for leftover in remove_leftovers(folder)]
    for leftover in removed:
        logger.info("removed %s", leftover.describe())
    total = format_bytes(sum(leftover.bytes for leftover in removed))
    logger.info("%d leftover(s) of killed exports removed under %s (%s)", len(removed), output_dir, total)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """The body of `main`: one export, or --clean."""
    if args.clean:
        return clean(args.output_dir)
    import_torch_quietly()
    from export.manifest import read_manifest
    from export.pipeline import ExportPipeline

    parity = None if args.skip_parity else partial(run_parity, steps=args.parity_steps)
    folder = ExportPipeline(config_from_args(args)).run(parity=parity, keep_model=False)
    return EXIT_PARITY_FAILED if read_manifest(folder)["parity"]["status"] == "failed" else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as in the module docstring; a usage error exits from argparse (SystemExit 2)."""
    return run_cli(build_parser(), run, None if argv is None else list(argv), log_stream=sys.stdout)


def take_reference(pipeline: ExportPipeline) -> EagerModel:
    """The eager model of the export as an `EagerModel`; the pipeline lets go of it, so that the parity
    check can free it before the runtimes load the artifact (`runtime.parity.check_parity`), and of
    its weight-free twin and graph modules, which only the export stages use."""
    from runtime.eager import EagerModel

    loaded, config = pipeline.loaded, pipeline.config
    pipeline.loaded = pipeline.hollow = pipeline.graphs = None
    return EagerModel.from_loaded(loaded, keep=config.keep_count, method=config.method)


if __name__ == "__main__":
    sys.exit(main())
