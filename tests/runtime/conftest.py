"""Fixtures of the runtime tests. The artifacts come from the shared session fixtures
(`artifact_dirs`, `tiny`: tests/export/fixtures.py), exported once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image
from transformers import LlavaProcessor

from models import LoadedModel
from runtime.artifact import Artifact, load_artifact
from runtime.eager import EagerModel
from runtime.samples import sample_image


@pytest.fixture(scope="session")
def runtime_artifact(artifact_dirs) -> Artifact:
    """The keep-64 artifact, loaded and checked."""
    return load_artifact(artifact_dirs[64])


@pytest.fixture(scope="session")
def hf_processor(tiny: LoadedModel) -> LlavaProcessor:
    """transformers' processor of the checkpoint the artifacts were exported from."""
    return tiny.processor


@pytest.fixture(scope="session")
def image() -> Image.Image:
    return sample_image()


@pytest.fixture(scope="session")
def eager(tiny: LoadedModel) -> Callable[[int], EagerModel]:
    """keep -> the eager pruned model (one per keep, sharing the weights)."""
    models: dict[int, EagerModel] = {}

    def build(keep: int) -> EagerModel:
        if keep not in models:
            models[keep] = EagerModel.from_loaded(tiny, keep=keep)
        return models[keep]

    return build

