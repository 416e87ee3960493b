"""Build the `tiny-llava` checkpoint: LLaVA-1.5 at toy size, random weights, saved like a real one.

The directory holds what `from_pretrained` expects from a llava-hf checkpoint: the model (config,
safetensors, generation config) and a `LlavaProcessor` (CLIP image processor at 336 px, a small
byte-level BPE tokenizer trained here on a built-in corpus, the LLaVA-1.5 chat template). Nothing
is downloaded. Building is deterministic and idempotent: a recipe stamp in the directory tells a
finished build of the current recipe, which is then reused. `check_build` accepts a folder someone
names (`--model-path`) only when it holds such a build, and never writes there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import LlavaForConditionalGeneration

from models.random_weights import build_random_model
from models.registry import ModelSpec, get_spec
from models.synthetic_processor import CORPUS, SPECIAL_TOKENS, build_processor, generation_config

NAME = "tiny-llava"
SEED = 2  # with this seed, greedy decoding of the random weights does not repeat one token
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "build" / "models" / NAME
STAMP_FILE = "tiny_llava_recipe.json"


def build_tiny_llava(directory: str | os.PathLike | None = None) -> Path:
    """Build the tiny-llava checkpoint into `directory` unless the current recipe is already there.

    Args:
        directory: target folder; default `build/models/tiny-llava` in the repository.
    Returns:
        The checkpoint directory, loadable with `LlavaForConditionalGeneration.from_pretrained`
        and `LlavaProcessor.from_pretrained`.
    """
    target = Path(directory) if directory is not None else DEFAULT_DIR
    spec = get_spec(NAME)
    stamp = _recipe_stamp(spec)
    if _read_stamp(target) == stamp:
        return target
    if target.exists() and any(target.iterdir()) and _read_stamp(target) is None:
        raise FileExistsError(f"{target} exists and is not a tiny-llava build; choose an empty or new directory")

    # Build next to the target and move it in at the end, so that a half-written build never
    # passes for a finished one.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        processor = build_processor(spec)
        processor.save_pretrained(staging)
        model = build_model(spec)
        model.save_pretrained(staging)
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def check_build(directory: str | os.PathLike) -> Path:
    """`directory` when it holds a tiny-llava build of the current recipe; nothing is built or deleted.

    Raises:
        FileNotFoundError: no tiny-llava build there.
        ValueError: a build of another recipe.
    """
    directory = Path(directory)
    stamp = _read_stamp(directory)
    # build_tiny_llava refuses a folder with files of something else.
    foreign = stamp is None and directory.is_dir() and any(directory.iterdir())
    target = "NEW_FOLDER" if foreign else directory
    how = (
        f"omit the model path to use {DEFAULT_DIR} (built on demand), or build one with "
        f"`python -c \"from models import build_tiny_llava; build_tiny_llava('{target}')\"`"
    )
    if stamp is None:
        raise FileNotFoundError(f"{directory} holds no tiny-llava build (no valid {STAMP_FILE}); {how}")
    if stamp != _recipe_stamp(get_spec(NAME)):
        raise ValueError(f"{directory} holds a tiny-llava build of another recipe; {how}")
    return directory


def build_model(spec: ModelSpec) -> LlavaForConditionalGeneration:
    """The tiny model with float32 random weights drawn from `SEED`."""
    model = build_random_model(spec.name, materialize=True, seed=SEED)
    model.generation_config = generation_config(spec)
    return model.eval()


def _recipe_stamp(spec: ModelSpec) -> dict[str, str | int]:
    recipe = repr((spec, SEED, SPECIAL_TOKENS, CORPUS)).encode()
    return {"name": NAME, "seed": SEED, "recipe_sha256": hashlib.sha256(recipe).hexdigest()}


def _read_stamp(directory: Path) -> dict | None:
    """The recipe stamp of a build in `directory`; None when there is none, or it does not parse."""
    path = directory / STAMP_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
