"""Shared fixtures: one tiny-llava checkpoint per session, built offline into a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import LoadedModel, PrunedLlava, build_tiny_llava, load_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("checkpoints") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny(tiny_dir) -> LoadedModel:
    return load_model("tiny-llava", tiny_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def image() -> Image.Image:
    """A fixed random RGB image, not square, so that the processor resizes and crops."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def prompt() -> str:
    return "What is in the image?"


@pytest.fixture(scope="session")
def unpruned(tiny) -> PrunedLlava:
    return PrunedLlava(tiny.model, tiny.processor, tiny.spec)


@pytest.fixture(scope="session")
def pruned(tiny) -> PrunedLlava:
    """Keeps 64 of the 576 image tokens (88.9 % pruning)."""
    return PrunedLlava(tiny.model, tiny.processor, tiny.spec, keep=64)


@pytest.fixture(scope="session")
def inputs(unpruned, image, prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [1, T] and pixel_values [1, 3, 336, 336] of the test prompt."""
    return unpruned.prepare_inputs(image, prompt)
