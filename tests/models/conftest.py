"""Fixtures of the model tests. `tiny_dir` and `tiny` (the tiny-llava checkpoint, built once per
session) come from tests/export/fixtures.py, registered in tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.eager import EagerModel


@pytest.fixture(scope="session")
def image() -> Image.Image:
    """A fixed random RGB image, not square, so that the processor resizes and crops."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def prompt() -> str:
    return "What is in the image?"


@pytest.fixture(scope="session")
def unpruned(tiny) -> EagerModel:
    return EagerModel.from_loaded(tiny)


@pytest.fixture(scope="session")
def pruned(tiny) -> EagerModel:
    """Keeps 64 of the 576 image tokens (88.9 % pruning)."""
    return EagerModel.from_loaded(tiny, keep=64)


@pytest.fixture(scope="session")
def inputs(unpruned, image, prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [1, T] and pixel_values [1, 3, 336, 336] of the test prompt."""
    return tuple(torch.from_numpy(x) for x in unpruned.prepare_inputs(image, prompt))


@torch.no_grad()
def embed(model: EagerModel, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The prefill's inputs as the runtime's loop makes them (`runtime.generate.greedy`), as tensors:
    inputs_embeds [1, T, d] with the image spliced in, position_ids int64 [rows, 1, T],
    image_positions int64 [N]."""
    prepared = model.inputs.prepare(input_ids.numpy(), pixel_values.numpy())
    embeds = model.session.embed_tokens(prepared.input_ids)
    image_embeds, selection = model.session.vision_encoder(prepared.pixel_values)
    embeds[0, prepared.image_positions] = image_embeds
    positions = prepared.positions(None if selection is None else selection[0]).prompt
    return tuple(torch.from_numpy(x) for x in (embeds, positions, prepared.image_positions))
