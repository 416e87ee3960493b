"""Build the `tiny-qwen2-vl` checkpoint: Qwen2-VL at toy size, random weights, saved like a real one.

The directory holds what `from_pretrained` expects from a Qwen2-VL checkpoint: the model (config,
safetensors, generation config) and a processor (`models.qwen2_vl_processor`: Qwen2-VL's image
processor kept at one fixed 224 x 224 size, a small byte-level BPE with Qwen2-VL's special tokens
at ids 0..13, Qwen2-VL's chat template). Nothing is downloaded. Building is deterministic and
idempotent: a recipe stamp in the directory tells a finished build of the current recipe, which
is then reused.

    224 x 224 image ──patches of 14──> 16 x 16 grid, pixel_values [256, 3 * 2 * 14 * 14]
        ──2 x 2 merge──> 8 x 8 = 64 image tokens (<|image_pad|>) in the prompt
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Qwen2VLForConditionalGeneration

from models.recipe_build import Recipe
from models.registry import QWEN2_VL_SPECIAL_TOKENS, get_spec
from models.synthetic_processor import CORPUS

NAME = "tiny-qwen2-vl"
SEED = 4  # with this seed, greedy decoding of the random weights does not repeat one token


def build_tiny_qwen2_vl(directory: str | os.PathLike | None = None) -> Path:
    """Build the tiny-qwen2-vl checkpoint into `directory` (default `build/models/tiny-qwen2-vl` in
    the repository) unless the current recipe is already there; returns the folder, loadable with
    `Qwen2VLForConditionalGeneration.from_pretrained` and `Qwen2VLImageTextProcessor.from_pretrained`."""
    return RECIPE.build(directory)


def check_build(directory: str | os.PathLike) -> Path:
    """`directory` when it holds a tiny-qwen2-vl build of the current recipe; nothing is built or deleted."""
    return RECIPE.check(directory)


def _write(folder: Path) -> None:
    spec = get_spec(NAME)
    spec.model_family.synthetic_processor(spec).save_pretrained(folder)
    build_model().save_pretrained(folder)


def build_model() -> Qwen2VLForConditionalGeneration:
    """The tiny model with float32 random weights drawn from `SEED`; the global RNG state is kept."""
    spec = get_spec(NAME)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2VLForConditionalGeneration(spec.hf_config())
    model.generation_config = spec.model_family.generation_config(spec)
    return model.eval()


RECIPE = Recipe(
    name=NAME,
    seed=SEED,
    ingredients=(get_spec(NAME), QWEN2_VL_SPECIAL_TOKENS, CORPUS),
    write=_write,
    default_dir=Path(__file__).resolve().parent.parent / "build" / "models" / NAME,
)
