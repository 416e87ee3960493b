"""Build the `tiny-llava`, `tiny-llava-next` and `tiny-llava-video` checkpoints: LLaVA-1.5,
LLaVA-NeXT and LLaVA-Video at toy size, random weights, saved like real ones.

A directory holds what `from_pretrained` expects from a llava-hf checkpoint: the model (config,
safetensors, generation config) and the family's processor (its CLIP image processor at the spec's
sizes, a small byte-level BPE tokenizer trained here on a built-in corpus, the LLaVA-1.5 chat
template). Nothing is downloaded. Building is deterministic and idempotent: a recipe stamp in the
directory tells a finished build of the current recipe, which is then reused. `check_build`
accepts a folder someone names (`--model-path`) only when it holds such a build, and never writes
there.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from models.random_weights import build_random_model
from models.recipe_build import Recipe
from models.registry import get_spec
from models.synthetic_processor import CORPUS, SPECIAL_TOKENS

NAME = "tiny-llava"
NEXT_NAME = "tiny-llava-next"
VIDEO_NAME = "tiny-llava-video"
# Seeds with which greedy decoding of the random weights does not repeat one token.
SEEDS = {NAME: 2, NEXT_NAME: 9, VIDEO_NAME: 3}
BUILD_DIR = Path(__file__).resolve().parent.parent / "build" / "models"


def build_tiny_llava(directory: str | os.PathLike | None = None) -> Path:
    """Build the tiny-llava checkpoint into `directory` (default `build/models/tiny-llava` in the
    repository) unless the current recipe is already there; returns the folder, loadable with
    `LlavaForConditionalGeneration.from_pretrained` and `LlavaProcessor.from_pretrained`."""
    return RECIPE.build(directory)


def check_build(directory: str | os.PathLike) -> Path:
    """`directory` when it holds a tiny-llava build of the current recipe; nothing is built or deleted."""
    return RECIPE.check(directory)


def _write(name: str, folder: Path) -> None:
    spec = get_spec(name)
    spec.model_family.synthetic_processor(spec).save_pretrained(folder)
    model = build_random_model(name, materialize=True, seed=SEEDS[name])
    model.generation_config = spec.model_family.generation_config(spec)
    model.eval().save_pretrained(folder)


def _recipe(name: str) -> Recipe:
    return Recipe(
        name=name,
        seed=SEEDS[name],
        ingredients=(get_spec(name), SPECIAL_TOKENS, CORPUS),
        write=partial(_write, name),
        default_dir=BUILD_DIR / name,
    )


RECIPE = _recipe(NAME)
NEXT_RECIPE = _recipe(NEXT_NAME)
VIDEO_RECIPE = _recipe(VIDEO_NAME)
