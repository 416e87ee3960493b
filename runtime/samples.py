"""The fixed inputs of parity checks and benchmarks (torch-free)."""

from __future__ import annotations

import numpy as np
from PIL import Image

DEFAULT_PROMPT = "What is in the image?"


def sample_image() -> Image.Image:
    """400 x 300 random RGB pixels (seed 0): not square, so that preprocessing resizes and crops."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def sample_frames(frames: int) -> list[Image.Image]:
    """`frames` frames of 400 x 300 random RGB pixels (seeds 0, 1, ...): a video's worth of `sample_image`."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)) for _ in range(frames)]
