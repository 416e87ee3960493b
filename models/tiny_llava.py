"""Build the `tiny-llava` checkpoint: LLaVA-1.5 at toy size, random weights, saved like a real one.

The directory holds what `from_pretrained` expects from a llava-hf checkpoint: the model (config,
safetensors, generation config) and a `LlavaProcessor` (CLIP image processor at 336 px, a small
byte-level BPE tokenizer trained here on a built-in corpus, the LLaVA-1.5 chat template). Nothing
is downloaded. Building is deterministic and idempotent: a recipe stamp in the directory tells a
finished build of the current recipe, which is then reused. `check_build` accepts a folder someone
names (`--model-path`) only when it holds such a build, and never writes there.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import LlavaForConditionalGeneration

from models.random_weights import build_random_model
from models.recipe_build import Recipe
from models.registry import ModelSpec, get_spec
from models.synthetic_processor import CORPUS, SPECIAL_TOKENS

NAME = "tiny-llava"
SEED = 2  # with this seed, greedy decoding of the random weights does not repeat one token


def build_tiny_llava(directory: str | os.PathLike | None = None) -> Path:
    """Build the tiny-llava checkpoint into `directory` (default `build/models/tiny-llava` in the
    repository) unless the current recipe is already there; returns the folder, loadable with
    `LlavaForConditionalGeneration.from_pretrained` and `LlavaProcessor.from_pretrained`."""
    return RECIPE.build(directory)


def check_build(directory: str | os.PathLike) -> Path:
    """`directory` when it holds a tiny-llava build of the current recipe; nothing is built or deleted."""
    return RECIPE.check(directory)


def _write(folder: Path) -> None:
    spec = get_spec(NAME)
    spec.model_family.synthetic_processor(spec).save_pretrained(folder)
    build_model(spec).save_pretrained(folder)


def build_model(spec: ModelSpec) -> LlavaForConditionalGeneration:
    """The tiny model with float32 random weights drawn from `SEED`."""
    model = build_random_model(spec.name, materialize=True, seed=SEED)
    model.generation_config = spec.model_family.generation_config(spec)
    return model.eval()


RECIPE = Recipe(
    name=NAME,
    seed=SEED,
    ingredients=(get_spec(NAME), SPECIAL_TOKENS, CORPUS),
    write=_write,
    default_dir=Path(__file__).resolve().parent.parent / "build" / "models" / NAME,
)
