"""Find and load a registered model's checkpoint, offline, with errors that say where to get it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from models.registry import ModelSpec, get_spec
from models.tiny_llava import build_tiny_llava

MODEL_PATH_ENV = "MODEL_PATH"


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to run: the spec, the transformers model (eval mode) and its processor."""

    spec: ModelSpec
    model: LlavaForConditionalGeneration
    processor: LlavaProcessor


def resolve_checkpoint(
    name: str, model_path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local directory holding the checkpoint of model `name`; nothing is downloaded.

    For a Hugging Face model, looked up in order: `model_path`, the `MODEL_PATH` environment
    variable, the Hugging Face cache (`cache_dir`, default the hub's cache). For tiny-llava:
    `model_path`, default `build/models/tiny-llava`, built there if missing.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: no checkpoint where it looked; the message says how to get one.
    """
    spec = get_spec(name)
    if spec.hf_repo is None:
        return build_tiny_llava(model_path)

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
        f"architecture use models.build_random_model({name!r})."
    )


def load_model(
    name: str,
    model_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load model `name` and its processor from a local checkpoint (see `resolve_checkpoint`).

    Raises:
        ValueError: unknown name, or a checkpoint whose config contradicts the spec.
        FileNotFoundError: no checkpoint found.
    """
    spec = get_spec(name)
    directory = resolve_checkpoint(name, model_path, cache_dir=cache_dir)
    model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype, local_files_only=True)
    check_config(spec, model.config)
    processor = LlavaProcessor.from_pretrained(directory, local_files_only=True)
    return LoadedModel(spec=spec, model=model.eval(), processor=processor)


def check_config(spec: ModelSpec, config: LlavaConfig) -> None:
    """Raise ValueError when a checkpoint's config contradicts what the spec says of the model."""
    checks = (
        ("image size", config.vision_config.image_size, spec.vision.image_size),
        ("patch size", config.vision_config.patch_size, spec.vision.patch_size),
        ("image token id", config.image_token_id, spec.image_token_id),
        ("text layers", config.text_config.num_hidden_layers, spec.text.num_hidden_layers),
        ("text hidden size", config.text_config.hidden_size, spec.text.hidden_size),
        ("vision feature layer", config.vision_feature_layer, spec.vision_feature_layer),
        ("vision feature select strategy", config.vision_feature_select_strategy, spec.vision_feature_select_strategy),
    )
    wrong = [f"{label}: checkpoint {found!r}, spec {want!r}" for label, found, want in checks if found != want]
    if wrong:
        raise ValueError(f"the checkpoint does not match the {spec.name} spec: " + "; ".join(wrong))
