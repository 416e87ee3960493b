"""LLaVA-NeXT's host side: AnyRes tiles of the export's S x S image, LLaVA-1.5's positions.

    image ──8-bit RGB, stretched to S x S (PIL, bicubic)──> base tile: resized to t x t (CLIP steps)
                                                        └─> tiles: the S x S image cut into t x t, row-major
          ──> rescale, normalize ──> pixel_values float32 [1, 1 + (S/t)^2, 3, t, t]

Step for step what transformers' PIL LLaVA-NeXT image processor does for an S x S image, S one of
the model's square pinpoints. That processor would pick another tiling for another aspect ratio and
unpad the features to it; an export has one fixed tiling (one N), so the runtime stretches every
image to S x S first, as for Qwen2-VL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from runtime.families.base import ViewPicture
from runtime.families.llava import LlavaHost, crop_image
from runtime.preprocess import rescale_and_normalize, stretch


class LlavaNextHost(LlavaHost):
    """LLaVA-NeXT: the base tile and the high-resolution tiles of the stretched S x S image."""

    name = "llava_next"

    def __init__(self, manifest: dict[str, Any]):
        super().__init__(manifest)
        self.image_size = int(manifest["preprocess"]["image_size"])
        tile_height, tile_width = self.config.crop_size
        if tile_height != tile_width or self.image_size % tile_height:
            raise ValueError(
                f"preprocess.image_size {self.image_size} is not a whole number of square tiles "
                f"{self.config.crop_size}"
            )

    def preprocess(self, image: Image.Image, *, on_note: Callable[[str], None] | None = None) -> np.ndarray:
        config = self.config
        fitted = stretch(image, self.image_size, config.resample, on_note)
        tile = config.crop_size[0]
        pixels = np.asarray(fitted).transpose(2, 0, 1)  # [3, S, S] uint8
        corners = range(0, self.image_size, tile)
        tiles = [crop_image(fitted, config)]
        tiles += [pixels[:, top : top + tile, left : left + tile] for top in corners for left in corners]
        normalized = [rescale_and_normalize(t, config.rescale_factor, config.image_mean, config.image_std) for t in tiles]
        return np.stack(normalized)[None]

    def fit_image(self, image: Image.Image) -> Image.Image:
        return stretch(image, self.image_size, self.config.resample)

    model_view = fit_image  # both views cover the whole stretched S x S image

    def view_pictures(self, image: Image.Image) -> list[ViewPicture]:
        """The base view and the high-resolution view (its newline column drawn nowhere) on the
        stretched S x S image."""
        picture = self.fit_image(image)
        base, (height, width) = self.grid
        return [ViewPicture(picture, base, base), ViewPicture(picture, (height, width), (height, width - 1))]
