"""How far eager 8da4w differs from itself when each linear's result moves by one float32 ulp, against depth.

    python -m bench.parity_noise [--model llava-1.5-7b] [--layers 3 8 16 32] [--seeds 3] [--keep 64]
                                 [--steps 4] [--quantize-vision int8] [--json FILE]

Backends that quantize activations on the fly (ExecuTorch's 8da4w / 8da8w, ONNX Runtime's fast
profile) cannot match eager bit for bit: their kernels round each linear's result their own way
(another summation order), a last-bit difference moves an activation across a rounding step now
and then, and the differences compound over layers. This measures that noise on eager alone: the
model at its real widths with random weights (seed 0), `--layers` decoder layers
(`ModelSpec.with_text_layers`), the language model's linears in 8da4w; greedy on the parity check's
sample image and prompt, once as is and once per seed with every linear's result in the language
model moved one ulp up or down at random (`nudged_linears`); with `--quantize-vision int8`, the
vision tower's layers in 8da8w too and every linear of the model nudged. Per run: prefill logits max |diff| /
max |logits| (what the statistical criteria of `runtime.parity` bound), that ratio over
sqrt(layers), the kept-token overlap and the leading greedy tokens equal. It calibrates
`runtime.parity.PREFILL_NOISE_PER_SQRT_LAYER`. Prints a table, writes JSON under bench/results/.
Run with `make bench-noise` (14 min, peak 14.6 GiB here).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from torch import Tensor, nn
from tqdm import tqdm

from runtime.cli import RESULTS_DIR, HelpFormatter, run_cli, write_report
from runtime.contract import VISION_QUANTIZATIONS
from runtime.generate import GenerationConfig, Greedy, greedy
from runtime.samples import DEFAULT_PROMPT

DEFAULT_LAYERS = (3, 8, 16, 32)


@contextmanager
def nudged_linears(model: nn.Module, seed: int) -> Iterator[None]:
    """Every linear of `model` returns its result moved one ulp, each element up or down at random,
    as another summation order of the same products would: what an int8-activation kernel's own
    float rounding does at each linear."""
    generator = torch.Generator().manual_seed(seed)

    def nudge(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        up = torch.rand(output.shape, generator=generator) < 0.5
        return torch.nextafter(output, torch.where(up, torch.inf, -torch.inf).to(output.dtype))

    hooks = [module.register_forward_hook(nudge) for module in model.modules() if isinstance(module, nn.Linear)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def compare(reference: Greedy, nudged: Greedy) -> dict[str, float | int]:
    """The statistical criteria's measures of `nudged` against `reference` (both with logits)."""
    ours, theirs = nudged.logits[0], reference.logits[0]
    leading = next((i for i, (a, b) in enumerate(zip(nudged.token_ids, reference.token_ids)) if a != b), None)
    return {
        "prefill_relative": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
        "kept_overlap": len(set(nudged.kept_indices) & set(reference.kept_indices)) / len(reference.kept_indices),
        "leading_tokens_equal": len(reference.token_ids) if leading is None else leading,
    }


def measure_depth(
    model: str, layers: int, *, seeds: int, keep: int, steps: int, vision: str = "none"
) -> list[dict[str, Any]]:
    """One row per seed: the nudged run against the plain one at `layers` decoder layers, the
    vision tower's layers in `vision` ("none" or "int8") weights."""
    from models import load_for_export
    from models.quantize import Quantization
    from runtime.eager import EagerModel
    from runtime.samples import sample_image

    vision_quantization = Quantization(vision)
    loaded = load_for_export(
        model, quantization=Quantization.INT4, vision_quantization=vision_quantization, seed=0, text_layers=layers
    )
    # What rounds activations to int8: the language model, and the vision tower when quantized.
    quantized = loaded.model.model if vision_quantization is Quantization.INT8 else loaded.model.model.language_model
    eager = EagerModel.from_loaded(loaded, keep=keep)
    inputs = eager.inputs.prepare(*eager.prepare_inputs(sample_image(), DEFAULT_PROMPT))
    config = GenerationConfig(max_new_tokens=steps, ignore_eos=True, return_logits=True)
    reference = greedy(eager.session, inputs, config, eager.eos_token_ids)
    rows = []
    for seed in range(1, seeds + 1):
        with nudged_linears(quantized, seed):
            nudged = greedy(eager.session, inputs, config, eager.eos_token_ids)
        measures = compare(reference, nudged)
        per_sqrt_layer = measures["prefill_relative"] / math.sqrt(layers)
        rows.append({"layers": layers, "vision": vision, "seed": seed, **measures, "per_sqrt_layer": per_sqrt_layer})
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.parity_noise", description=__doc__.split("\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--model", default="llava-1.5-7b", help="a registered model with random weights")
    parser.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS), help="decoder depths")
    parser.add_argument("--seeds", type=int, default=3, help="nudged runs per depth")
    parser.add_argument("--keep", type=int, default=64, help="image tokens kept")
    parser.add_argument("--steps", type=int, default=4, help="greedy tokens per run")
    parser.add_argument(
        "--quantize-vision",
        choices=VISION_QUANTIZATIONS,
        default=VISION_QUANTIZATIONS[0],
        help="the vision tower's weights, as for export",
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "parity_noise.json", help="report file")
    return parser


def run(args: argparse.Namespace) -> int:
    from models.registry import get_spec

    spec = get_spec(args.model)
    for layers in args.layers:
        spec.with_text_layers(layers)  # ValueError at once for a depth without the pruning layer
    rows = []
    for layers in tqdm(args.layers, desc="depths", unit="depth"):
        rows += measure_depth(
            args.model, layers, seeds=args.seeds, keep=args.keep, steps=args.steps, vision=args.quantize_vision
        )
    print(tabulate(rows, headers="keys", floatfmt=".4f"))
    worst = max(row["per_sqrt_layer"] for row in rows)
    print(f"largest prefill max |diff| / max |logits| / sqrt(layers): {worst:.4f}")
    report = {
        "model": args.model,
        "keep": args.keep,
        "steps": args.steps,
        "vision_quantization": args.quantize_vision,
        "runs": rows,
        "worst_per_sqrt_layer": worst,
    }
    write_report(report, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
