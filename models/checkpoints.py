"""Find and load a registered model's checkpoint, offline, with errors that say where to get it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from models import tiny_llava, tiny_qwen2_vl
from models.materialize import fill_random, keep_loaded, materialize
from models.quantize import Quantization, quantize_block
from models.random_weights import build_random_model
from models.recipe_build import Recipe
from models.registry import ModelSpec, get_spec

MODEL_PATH_ENV = "MODEL_PATH"
# The checkpoints built here from a recipe, by model name.
TINY_RECIPES: dict[str, Recipe] = {
    recipe.name: recipe for recipe in (tiny_llava.RECIPE, tiny_llava.NEXT_RECIPE, tiny_llava.VIDEO_RECIPE, tiny_qwen2_vl.RECIPE)
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: the spec, the transformers model (eval mode), its processor, and the
    checkpoint folder it was loaded from (None for random weights)."""

    spec: ModelSpec
    model: PreTrainedModel
    processor: ProcessorMixin
    checkpoint: Path | None = None


def resolve_checkpoint(
    name: str, model_path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local directory holding the checkpoint of model `name`; nothing is downloaded.

    For a Hugging Face model, looked up in order: `model_path`, the `MODEL_PATH` environment
    variable, the Hugging Face cache (`cache_dir`, default the hub's cache). For a tiny model
    (`TINY_RECIPES`): `model_path`, which must hold a build of the current recipe (nothing is
    written there), or by default the project's own `build/models/<name>`, built there if missing.

    Raises:
        ValueError: unknown name; a config.json that does not parse; a tiny build of another recipe.
        FileNotFoundError: no checkpoint where it looked; the message says how to get one.
    """
    spec = get_spec(name)
    if name in TINY_RECIPES:
        if model_path is None:
            return TINY_RECIPES[name].build()
        directory = TINY_RECIPES[name].check(model_path)
        _check_config_json(directory, f"remove {directory} and build it again, or omit the model path")
        return directory
    if spec.hf_repo is None:
        raise FileNotFoundError(
            f"{name} has no checkpoint anywhere: it exists with random weights only; {_random_weights_hint(name)}"
        )

    explicit = model_path if model_path is not None else os.environ.get(MODEL_PATH_ENV)
    if explicit:
        directory = Path(explicit)
        if not (directory / "config.json").is_file():
            source = "model_path" if model_path is not None else f"{MODEL_PATH_ENV}"
            raise FileNotFoundError(
                f"{name}: {source}={directory} holds no checkpoint (no config.json). Download it there on a "
                f"machine with internet: `hf download {spec.hf_repo} --local-dir {directory}` "
                f"(older huggingface_hub: `huggingface-cli download ...`)."
            )
        _check_config_json(directory, f"download it again: `hf download {spec.hf_repo} --local-dir {directory}`")
        return directory

    config_file = try_to_load_from_cache(spec.hf_repo, "config.json", cache_dir=cache_dir)
    if isinstance(config_file, str):
        snapshot = Path(config_file).parent
        if any(snapshot.glob("*.safetensors")):
            return snapshot
    cache = cache_dir if cache_dir is not None else constants.HF_HUB_CACHE
    raise FileNotFoundError(
        f"{name}: no weights of {spec.hf_repo} found. {MODEL_PATH_ENV} is not set and the Hugging Face "
        f"cache {cache} has no complete snapshot. On a machine with internet run `hf download {spec.hf_repo}` "
        f"(older huggingface_hub: `huggingface-cli download {spec.hf_repo}`) and copy the cache here, or "
        f"download to a folder and set {MODEL_PATH_ENV}=<folder>. For random weights of the same "
        f"architecture, {_random_weights_hint(name)}."
    )


def _random_weights_hint(name: str) -> str:
    return (
        f"export it with `make export MODEL={name} RANDOM_WEIGHTS=1` (or `python -m export -m {name} --random-weights`)"
    )


def _check_config_json(directory: Path, fix: str) -> None:
    """Raise ValueError naming `directory/config.json` when it is not valid JSON; `fix` says what to do."""
    path = directory / "config.json"
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} holds no checkpoint (no config.json); {fix}") from None
    except ValueError as error:  # JSON or UTF-8 decoding
        raise ValueError(f"{path} is not valid JSON ({error}); {fix}") from None


def load_model(
    name: str,
    model_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    frames: int | None = None,
) -> LoadedModel:
    """Load model `name` and its processor from a local checkpoint (see `resolve_checkpoint`).

    Args:
        image_size: the image resolution of the export (`ModelSpec.with_image_size`); default the spec's.
        frames: a video model's frames per prompt (`ModelSpec.with_frames`); default the spec's.
    Raises:
        ValueError: unknown name, or a checkpoint whose config contradicts the spec.
        FileNotFoundError: no checkpoint found.
    """
    spec = _spec(name, image_size, frames)
    family = spec.model_family
    directory = resolve_checkpoint(name, model_path, cache_dir=cache_dir)
    model = family.model_class.from_pretrained(directory, dtype=dtype, local_files_only=True)
    check_config(spec, model.config)
    processor = family.fit_processor(family.processor_class.from_pretrained(directory, local_files_only=True), spec)
    return LoadedModel(spec=spec, model=model.eval(), processor=processor, checkpoint=directory)


def load_for_export(
    name: str,
    *,
    quantization: Quantization = Quantization.NONE,
    vision_quantization: Quantization = Quantization.NONE,
    seed: int | None = None,
    model_path: str | os.PathLike | None = None,
    image_size: int | None = None,
    frames: int | None = None,
    text_layers: int | None = None,
    weights: bool = True,
) -> LoadedModel:
    """Model `name` in float32 with its language model's linears quantized, built block by block.

    Args:
        quantization: weight format of the language model's linears (`models.quantize`).
        vision_quantization: weight format of the vision tower's layers (`models.quantize.VISION_QUANTIZATIONS`).
        seed: draw random weights from this seed (synthetic processor, no checkpoint needed);
            None loads the checkpoint (see `resolve_checkpoint`).
        image_size: the image resolution of the export (`ModelSpec.with_image_size`); default the spec's.
        frames: a video model's frames per prompt (`ModelSpec.with_frames`); default the spec's.
        text_layers: the language model's depth (`ModelSpec.with_text_layers`), random weights only.
        weights: False leaves the model on the meta device, no weight read or drawn: its config,
            generation config and processor, what an artifact's manifest and processor files need.
    Raises:
        ValueError: `text_layers` without `seed`.
    Peak memory: the result plus one float32 block; a checkpoint to be quantized is first loaded
    in float16 (what LLaVA checkpoints hold), so a 7B one needs 13.2 GiB on the way.
    """
    spec = _spec(name, image_size, frames)
    if text_layers is not None:
        if seed is None:
            raise ValueError(f"no checkpoint has {name} at {text_layers} layers: another depth takes random weights")
        spec = spec.with_text_layers(text_layers)
    family = spec.model_family
    quantize = partial(quantize_block, quantization=quantization, vision=vision_quantization)
    if seed is not None:
        # On the meta device, filled below; another image size or frame count is the same architecture.
        model = build_random_model(name if text_layers is None else spec)
        model.generation_config = family.generation_config(spec)
        if weights:
            model = materialize(model, fill_random(seed), transform=quantize)
        return LoadedModel(spec=spec, model=model, processor=family.synthetic_processor(spec))
    dtype = torch.float32 if quantization is Quantization.NONE else torch.float16
    loaded = load_model(name, model_path, dtype=dtype, image_size=image_size, frames=frames)
    if weights:
        materialize(loaded.model, keep_loaded, transform=quantize)
    return loaded


def check_config(spec: ModelSpec, config: PretrainedConfig) -> None:
    """Raise ValueError when a checkpoint's config contradicts what the spec says of the model."""
    if not isinstance(config, spec.model_family.config_class):
        note = spec.model_family.checkpoint_note(spec)
        raise ValueError(
            f"the checkpoint is a {type(config).__name__}, {spec.name} is a {spec.model_family.config_class.__name__}"
            + (f": {note}" if note else "")
        )
    wrong = spec.model_family.config_mismatches(spec, config)
    if wrong:
        raise ValueError(f"the checkpoint does not match the {spec.name} spec: " + "; ".join(wrong))


def _spec(name: str, image_size: int | None, frames: int | None) -> ModelSpec:
    spec = get_spec(name)
    spec = spec if image_size is None else spec.with_image_size(image_size)
    return spec if frames is None else spec.with_frames(frames)
