"""Fixtures of the model tests. `tiny_dir` and `tiny` (the tiny-llava checkpoint, built once per
session) come from tests/export/fixtures.py, registered in tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import PrunedLlava


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
