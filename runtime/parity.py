"""Artifact vs eager parity: the exported graphs on each runtime against eager PyTorch (`runtime.eager`).

On the same input_ids and pixel_values (the runtime's own preprocessing of a fixed test image and
prompt), both run the same greedy loop (`runtime.generate.greedy`) for a fixed number of steps,
end-of-sequence ignored. Checked:
  - kept indices identical;
  - prefill logits and each decode step's logits within the tolerance of (backend, quantization);
  - greedy tokens identical at every step;
  (ExecuTorch with quantized weights and ONNX Runtime's fast profile, whose activations are
  quantized on the fly: most kept indices shared, prefill logits within the noise that quantizing
  activations makes at the model's depth, compared with eager made to keep the backend's tokens
  when it kept others; see STATISTICAL;)
  - the runtime's tokenization identical to the transformers processor's, its pixel values within
    PREPROCESS_TOLERANCE (of the image as the family fits it to the export's size, `fit_image`).

    python -m runtime.parity ARTIFACT_DIR [--backends onnx executorch] [--model-path DIR] [--json FILE]

Exit status 1 when any check fails. `check_parity` is the same check as a function (the export
CLI stores `ParityReport.to_dict()` in the manifest).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tabulate import tabulate

from runtime.artifact import Artifact, load_artifact
from runtime.backends import BACKENDS
from runtime.backends.base import Selection
from runtime.cli import EXIT_OK, EXIT_PARITY_FAILED, HelpFormatter, import_torch_quietly, run_cli
from runtime.generate import GenerationConfig, Greedy, InputProcessor, Runner, check_sequence_fits
from runtime.measure import release_freed_memory
from runtime.samples import DEFAULT_PROMPT

if TYPE_CHECKING:
    from runtime.eager import EagerModel

# torch and the models are imported where the eager reference is needed, after the CLI has
# checked its arguments and silenced third-party import noise (`runtime.cli`).

logger = logging.getLogger(__name__)

# Exact parity: kept indices and every greedy token identical, logits within a max-abs tolerance,
# per (backend, quantization of the artifact). ONNX Runtime's quantized linears are weight-only
# (MatMulNBits) and match eager on the same integer weights like float32 does.
TOLERANCES = {
    ("onnx", "none"): 1e-4,
    ("executorch", "none"): 1e-3,
    ("onnx", "int4"): 1e-4,
    ("onnx", "int8"): 1e-4,
}
# ExecuTorch's quantized linears (8da4w, 8da8w) quantize their activations to int8 on the fly.
# A last-bit float difference upstream (another summation order) moves an activation across a
# rounding step now and then, and each such step shifts the output by a whole quantum: one 8da4w
# linear matches eager to 1e-6 relative on identical inputs, a Llama MLP only to 7e-4, and the
# differences compound over layers. Kept indices and tokens are then not bit-stable, so these
# artifacts are held to statistical criteria: most kept indices shared, prefill logits within the
# noise of their depth. That noise, measured on eager alone (`make bench-noise`: eager 8da4w against
# itself with each linear's result in the language model moved one ulp, LLaVA-1.5-7B's widths, 3
# seeds at 3, 8, 16 and 32 layers): prefill logits up to PREFILL_NOISE_PER_SQRT_LAYER * sqrt(layers)
# of their largest magnitude apart (5.9-7.0 % at 3 layers, 12.6-19.6 % at 32: no faster than the
# square root of the depth), 94-100 % of the kept tokens shared, the first token another in 5 of the
# 12 runs. The first token is not held: it is the argmax of the prefill logits, which are. A wrong
# graph differs by the logits' whole range. The selection is a chain of argmaxes: noise at its input
# swaps a few kept tokens, and 30 layers on other tokens move the logits by more than noise. So the
# overlap judges the selection, and the logits are compared on one selection: a backend that kept
# other tokens is compared with eager made to keep the same ones (`EagerSession.selection_forced`).
# ONNX Runtime's fast profile (MatMulNBits `accuracy_level` 4, int8 activations per block) is held
# to them too: its (onnx, int4 / int8) pairs are exact ones only in the exact profile (`_held_exact`).
# An int8 vision tower (`model.vision_quantization`, ExecuTorch) adds the same kind of noise at the
# language model's input: measured the same way with every linear of the model nudged (`make
# bench-noise QUANTIZE_VISION=int8`, CLIP ViT-L/14-336 in 8da8w, 3 seeds): 5.7-8.0 % at 3 layers,
# 11.9-16.2 % at 8 (up to 0.0574 per sqrt(layer)), 89-95 % of the kept tokens shared. Such artifacts
# are held to PREFILL_NOISE_PER_SQRT_LAYER_INT8_VISION instead.
STATISTICAL = {("executorch", "int4"), ("executorch", "int8")}
MIN_KEPT_OVERLAP = 0.8
PREFILL_NOISE_PER_SQRT_LAYER = 0.04
PREFILL_NOISE_PER_SQRT_LAYER_INT8_VISION = 0.06
NOISE_MARGIN = 1.5
PREPROCESS_TOLERANCE = 1e-5
DEFAULT_STEPS = 16
# A reference model this small (its weights' bytes) stays loaded through the backends' runs, where
# a larger one is freed: the 3-layer real-width LLaVA (2.7 GB) stays, its Qwen2-VL (6.3 GB) and
# every 7B model go.
SMALL_REFERENCE_BYTES = 4 * 1024**3
# The report's mark on a backend whose logits were compared with eager forced to its tokens.
FORCED_NOTE = "eager on its tokens"


def statistical_tolerance(eager_prefill_logits: np.ndarray, num_layers: int, *, int8_vision: bool = False) -> float:
    """The max-abs prefill logits difference a backend that quantizes activations may show against
    eager: NOISE_MARGIN times the noise of `num_layers` decoder layers, fed by an int8 vision tower
    or not (see STATISTICAL)."""
    per_sqrt_layer = PREFILL_NOISE_PER_SQRT_LAYER_INT8_VISION if int8_vision else PREFILL_NOISE_PER_SQRT_LAYER
    noise = per_sqrt_layer * math.sqrt(num_layers)
    return NOISE_MARGIN * noise * float(np.abs(eager_prefill_logits).max())


@dataclass(frozen=True)
class BackendParity:
    """One backend against eager.

    Attributes:
        backend: "onnx" or "executorch".
        exact: held to exact parity (`TOLERANCES`), else to the statistical criteria (`STATISTICAL`).
        tolerance: the allowed max-abs logits difference (statistical: of the prefill logits only,
            `statistical_tolerance`).
        kept_indices_equal: the artifact kept exactly the eager model's image tokens, chosen in the
            same order.
        kept_overlap: the fraction of eager's kept tokens the artifact kept too.
        selection_forced: the logits and tokens are compared with eager made to keep the
            artifact's tokens (`EagerSession.selection_forced`): a statistical backend that kept
            other tokens. Else with eager's own run.
        prefill_logits_max_abs: max |artifact - eager| of the prefill logits.
        decode_logits_max_abs: the same for each decode step.
        tokens, eager_tokens: the greedy tokens of the artifact and of eager.
    """

    backend: str
    exact: bool
    tolerance: float
    kept_indices_equal: bool
    kept_overlap: float
    selection_forced: bool
    prefill_logits_max_abs: float
    decode_logits_max_abs: list[float]
    tokens: list[int]
    eager_tokens: list[int]

    @property
    def tokens_equal(self) -> bool:
        return self.tokens == self.eager_tokens

    @property
    def logits_max_abs(self) -> float:
        return max([self.prefill_logits_max_abs, *self.decode_logits_max_abs])

    @property
    def passed(self) -> bool:
        if self.exact:
            return self.kept_indices_equal and self.tokens_equal and self.logits_max_abs <= self.tolerance
        return self.kept_overlap >= MIN_KEPT_OVERLAP and self.prefill_logits_max_abs <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "tokens_equal": self.tokens_equal,
            "logits_max_abs": self.logits_max_abs,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class ParityReport:
    """Parity of one artifact folder on each of its backends.

    Attributes:
        artifact: the folder. model, keep, quantization, vision_quantization: from its manifest.
        prompt: the prompt used. steps: generated tokens compared.
        input_ids_equal: the runtime's tokenization equals the transformers processor's.
        pixel_values_max_abs: max |runtime - transformers| of the preprocessed image.
        backends: one entry per backend checked.
    """

    artifact: str
    model: str
    keep: int
    quantization: str
    vision_quantization: str
    prompt: str
    steps: int
    input_ids_equal: bool
    pixel_values_max_abs: float
    backends: list[BackendParity]

    @property
    def preprocess_passed(self) -> bool:
        return self.input_ids_equal and self.pixel_values_max_abs <= PREPROCESS_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.preprocess_passed and all(backend.passed for backend in self.backends)

    def to_dict(self) -> dict[str, Any]:
        fields = {key: value for key, value in asdict(self).items() if key != "backends"}
        return {
            **fields,
            "preprocess_tolerance": PREPROCESS_TOLERANCE,
            "preprocess_passed": self.preprocess_passed,
            "backends": {backend.backend: backend.to_dict() for backend in self.backends},
            "passed": self.passed,
        }


def check_parity(
    artifact_dir: str | os.PathLike,
    *,
    backends: list[str] | None = None,
    reference: EagerModel | None = None,
    model_path: str | os.PathLike | None = None,
    image: str | os.PathLike | Image.Image | None = None,
    prompt: str = DEFAULT_PROMPT,
    steps: int = DEFAULT_STEPS,
) -> ParityReport:
    """Run the artifact on each backend and the eager pruned model on the same inputs; compare.

    Args:
        artifact_dir: the artifact folder (checked: manifest, sha256 of every file).
        backends: default every backend the artifact holds.
        reference: the eager model, already loaded with the artifact's keep; default loaded from
            `model_path`, else from the checkpoint or seed recorded in the manifest. Eager runs
            first; then, unless the caller holds it too, a reference larger than
            `SMALL_REFERENCE_BYTES` is freed, so that a large model and the artifact's runtime are
            never in memory together. A statistical backend that kept other tokens than eager needs
            eager once more, on its tokens: the reference if it still lives, else one loaded again
            (minutes at 7B).
        image: a path (an image, or a video for a video model); default the family's fixed
            sample (`HostFamily.sample`: `runtime.samples`).
    Raises:
        ValueError: a tolerance unknown for the artifact's quantization, a reference with another keep
            or method, or no checkpoint to load the reference from.
    """
    config = GenerationConfig(max_new_tokens=steps, ignore_eos=True, return_logits=True)
    artifact = load_artifact(artifact_dir)
    backends = list(artifact.backends) if backends is None else backends
    if not backends:
        raise ValueError("no backend to check")
    for backend in backends:
        artifact.require_backend(backend)
        if (backend, artifact.quantization) not in TOLERANCES.keys() | STATISTICAL:
            raise ValueError(f"no parity criteria for {backend} with {artifact.quantization} weights")
    from models.quantize import Quantization, materialized_bytes, weight_only

    processor = InputProcessor.from_artifact(artifact)
    image = processor.family.sample() if image is None else processor.family.load(image)
    inputs = processor(image, prompt)
    input_ids, pixel_values = inputs.input_ids, inputs.pixel_values
    # Checked before the eager model runs: at 7B that takes minutes.
    check_sequence_fits(artifact, inputs.num_tokens, steps)
    if reference is None:
        reference = load_reference(artifact, model_path)
    if reference.keep != artifact.keep:
        raise ValueError(f"the reference keeps {reference.keep} image tokens, the artifact {artifact.keep}")
    if reference.method.name != artifact.method:
        raise ValueError(f"the reference selects with {reference.method.name}, the artifact with {artifact.method}")

    hf_ids, hf_pixels = reference.prepare_inputs(image, prompt)

    def run_eager(model: EagerModel, twin: str, selection: Selection | None = None) -> Greedy:
        with weight_only(model.model) if twin == "weight_only" else nullcontext():
            with model.session.selection_forced(selection) if selection else nullcontext():
                return model.generate_ids(input_ids, pixel_values, config)

    eager_runs = {
        twin: run_eager(reference, twin)
        for twin in dict.fromkeys(_eager_twin(backend, artifact.quantization) for backend in backends)
    }
    # Eager is done: a large reference only this call holds is freed before the backends load
    # theirs, and each backend's runtime before the next one's; found again (or loaded again) if a
    # statistical backend chose other tokens. A small one stays for that case: no reload.
    small = materialized_bytes(reference.model, Quantization(artifact.quantization)) <= SMALL_REFERENCE_BYTES
    kept = reference if small else None
    held = weakref.ref(reference)
    del reference
    release_freed_memory()
    results = []
    for backend in backends:
        twin = _eager_twin(backend, artifact.quantization)
        eager = eager_runs[twin]
        result = Runner(artifact, backend, allow_failed_parity=True).generate_ids(input_ids, pixel_values, config)
        release_freed_memory()
        exact = _held_exact(backend, artifact)
        same_selection = result.kept_indices == eager.kept_indices and result.selection_order == eager.selection_order
        compared = eager
        if not exact and result.kept_indices != eager.kept_indices:
            # The selection is judged by the overlap; the logits on one set of kept tokens, the
            # backend's (the order they were chosen in changes nothing downstream).
            reference = kept or held() or load_reference(artifact, model_path)
            compared = run_eager(reference, twin, (result.kept_indices, result.selection_order))
            del reference
            release_freed_memory()
        diffs = [float(np.abs(ours - theirs).max()) for ours, theirs in zip(result.logits, compared.logits)]
        results.append(
            BackendParity(
                backend=backend,
                exact=exact,
                tolerance=TOLERANCES[backend, artifact.quantization]
                if exact
                else statistical_tolerance(
                    compared.logits[0], artifact.text.num_layers, int8_vision=artifact.vision_quantization == "int8"
                ),
                kept_indices_equal=same_selection,
                kept_overlap=len(set(result.kept_indices) & set(eager.kept_indices)) / len(eager.kept_indices),
                selection_forced=compared is not eager,
                prefill_logits_max_abs=diffs[0],
                decode_logits_max_abs=diffs[1:],
                tokens=result.token_ids,
                eager_tokens=compared.token_ids,
            )
        )
        logger.info("%s: max |logits diff| %.3g", backend, results[-1].logits_max_abs)

    return ParityReport(
        artifact=str(artifact.root),
        model=artifact.model_name,
        keep=artifact.keep,
        quantization=artifact.quantization,
        vision_quantization=artifact.vision_quantization,
        prompt=prompt,
        steps=steps,
        input_ids_equal=bool(np.array_equal(hf_ids, input_ids)),
        pixel_values_max_abs=_max_abs(hf_pixels, pixel_values),
        backends=results,
    )


def load_reference(artifact: Artifact, model_path: str | os.PathLike | None = None) -> EagerModel:
    """The eager pruned model of the artifact: same weights (checkpoint, `model_path` or random seed),
    quantization (language model and vision tower), image size, keep and pruner config."""
    from models import load_for_export
    from models.checkpoints import TINY_RECIPES
    from models.quantize import Quantization
    from models.selectors import get_method
    from runtime.eager import EagerModel

    model = artifact.manifest["model"]
    seed = None
    if model_path is None:
        if model.get("source") == "random":
            seed = model["seed"]
        elif model["name"] in TINY_RECIPES:
            pass  # built from its fixed recipe in the project's own cache: never where the manifest points
        elif model.get("checkpoint"):
            model_path = model["checkpoint"]  # only read
        else:
            raise ValueError(f"{artifact.root} names no checkpoint: pass the one the export used (--model-path)")
    loaded = load_for_export(
        model["name"],
        quantization=Quantization(artifact.quantization),
        vision_quantization=Quantization(artifact.vision_quantization),
        seed=seed,
        model_path=model_path,
        image_size=artifact.manifest["geometry"]["image_size"],
        frames=artifact.manifest["geometry"].get("frames"),
    )
    pruning = artifact.manifest["pruning"]
    return EagerModel.from_loaded(loaded, keep=artifact.keep, method=get_method(pruning["method"], pruning["config"]))


def _held_exact(backend: str, artifact: Artifact) -> bool:
    """Whether `backend` on `artifact` is held to exact parity (`TOLERANCES`), else to the
    statistical criteria: ExecuTorch's quantized linears (the language model's, or an int8 vision
    tower's) and ONNX Runtime's fast profile quantize activations on the fly."""
    return (
        (backend, artifact.quantization) in TOLERANCES
        and not artifact.quantizes_activations(backend)
        and artifact.vision_quantization == "none"
    )


def _eager_twin(backend: str, quantization: str) -> str:
    """The eager math a backend's quantized linears follow: ONNX Runtime's MatMulNBits is weight-only
    (`export.onnx_weights`), ExecuTorch runs torchao's 8-bit dynamic activations as traced."""
    return "weight_only" if backend == "onnx" and quantization != "none" else "as_traced"


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


def format_report(report: ParityReport) -> str:
    rows = [
        [
            b.backend,
            "exact" if b.exact else "statistical",
            "yes" if b.kept_indices_equal else f"NO ({b.kept_overlap:.0%} shared{', ' + FORCED_NOTE if b.selection_forced else ''})",
            f"{b.prefill_logits_max_abs:.2e}",
            f"{max(b.decode_logits_max_abs, default=0.0):.2e}",
            f"{b.tolerance:.1e}",
            f"{sum(x == y for x, y in zip(b.tokens, b.eager_tokens))} of {len(b.tokens)}",
            "pass" if b.passed else "FAIL",
        ]
        for b in report.backends
    ]
    table = tabulate(
        rows,
        headers=["backend", "criteria", "kept equal", "prefill |dlogits|", "decode |dlogits|", "tol", "tokens equal", ""],
        disable_numparse=True,
    )
    if any(b.selection_forced for b in report.backends):
        table += f"\n{FORCED_NOTE}: logits and tokens compared with eager made to keep the backend's tokens"
    preprocess = (
        f"preprocessing vs transformers: input_ids {'equal' if report.input_ids_equal else 'DIFFERENT'}, "
        f"pixel max |diff| {report.pixel_values_max_abs:.2e} (tol {PREPROCESS_TOLERANCE:.0e})"
    )
    vision = "" if report.vision_quantization == "none" else f", {report.vision_quantization} vision tower"
    header = f"{report.model} keep {report.keep} ({report.quantization} weights{vision}), {report.artifact}"
    return "\n".join([header, table, preprocess, "PASSED" if report.passed else "FAILED"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.parity",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("artifact_dir", type=Path, help="an artifact folder written by `python -m export`")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: every backend in the artifact")
    parser.add_argument("--model-path", type=Path, help="checkpoint of the eager reference (default: the manifest's)")
    parser.add_argument("--image", type=Path, help="default: a fixed random 400 x 300 image")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question about the image")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="greedy tokens compared")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    return parser


def run(args: argparse.Namespace) -> int:
    import_torch_quietly()
    report = check_parity(
        args.artifact_dir,
        backends=args.backends,
        model_path=args.model_path,
        image=args.image,
        prompt=args.prompt,
        steps=args.steps,
    )
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
