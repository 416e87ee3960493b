"""LLaVA-1.5's host side: CLIP image preprocessing, one row of positions 0 .. T - 1.

    image ──8-bit RGB (alpha over white)──> resize shortest edge to `size` (PIL, bicubic)
          ──> center crop to crop_size (zero padding if smaller) ──> rescale, normalize
          ──> pixel_values float32 [1, 3, H, W]

Step for step what transformers' PIL CLIP processor does. The center crop keeps the middle square
of an image of another aspect ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from runtime.families.base import HostFamily
from runtime.preprocess import RESAMPLE, check_resample, check_size, rescale_and_normalize, to_rgb


@dataclass(frozen=True)
class PreprocessConfig:
    """The manifest's `preprocess` section of a LLaVA artifact.

    Attributes:
        size: the shortest edge after resizing.
        crop_size: (height, width) of the center crop.
        resample: PIL filter name, one of `runtime.preprocess.RESAMPLE`.
        rescale_factor: multiplies the 0..255 pixel values (1/255).
        image_mean, image_std: per-channel normalization, RGB order.
    """

    size: int
    crop_size: tuple[int, int]
    resample: str
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def __post_init__(self) -> None:
        check_resample(self.resample)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 channels, got {self.image_mean}, {self.image_std}")

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> PreprocessConfig:
        """Parse the manifest section; sizes may be ints or transformers' size dicts."""
        size = section["size"]
        crop = section["crop_size"]
        return cls(
            size=int(size["shortest_edge"] if isinstance(size, dict) else size),
            crop_size=(int(crop["height"]), int(crop["width"])) if isinstance(crop, dict) else (int(crop), int(crop)),
            resample=section["resample"],
            rescale_factor=float(section["rescale_factor"]),
            image_mean=tuple(float(v) for v in section["image_mean"]),
            image_std=tuple(float(v) for v in section["image_std"]),
        )


class LlavaHost(HostFamily):
    """LLaVA-1.5: CLIP preprocessing, positions 0 .. T - 1 and T, T + 1, ... in decode."""

    name = "llava"

    def __init__(self, manifest: dict[str, Any]):
        super().__init__(manifest)
        self.config = PreprocessConfig.from_manifest(manifest["preprocess"])

    def preprocess(self, image: Image.Image, *, on_note: Callable[[str], None] | None = None) -> np.ndarray:
        return preprocess_image(image, self.config)

    def model_view(self, image: Image.Image) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(crop_image(image, self.config).transpose(1, 2, 0)))

    def checked_position_ids(
        self, num_tokens: int, image_positions: np.ndarray, image_tokens: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """0 .. T - 1 whatever the image tokens: with the image's selected tokens only in the
        prompt (DivPrune), their positions are contiguous, as in DivPrune's released code."""
        return np.arange(num_tokens, dtype=np.int64)[None, None], 0


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """pixel_values float32 [1, 3, crop_height, crop_width] of one image.

    Raises:
        ValueError: the image is empty, has more than `MAX_IMAGE_PIXELS` or is more elongated than
            `MAX_ASPECT_RATIO`.
    """
    pixels = crop_image(image, config)
    return rescale_and_normalize(pixels, config.rescale_factor, config.image_mean, config.image_std)[None]


def crop_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """uint8 [3, crop_height, crop_width]: the image resized (shortest edge) and center-cropped.

    Raises:
        ValueError: as `preprocess_image`.
    """
    check_size(image.size, "the image")
    rgb = to_rgb(image)
    rgb = rgb.resize(_resized_size(rgb.width, rgb.height, config.size), resample=RESAMPLE[config.resample])
    return _center_crop(np.asarray(rgb).transpose(2, 0, 1), config.crop_size)


def _resized_size(width: int, height: int, shortest: int) -> tuple[int, int]:
    """(width, height) with the shortest edge at `shortest`, the other truncated like torchvision.

    Within `MAX_ASPECT_RATIO` (checked by `preprocess_image`) the longest edge is at most
    `MAX_ASPECT_RATIO * shortest` (6720 pixels for 336), whatever the image's size.
    """
    if width <= height:
        return shortest, int(shortest * height / width)
    return int(shortest * width / height), shortest


def _center_crop(pixels: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Center crop of [C, H, W] to [C, *crop], zero-padding an image smaller than the crop."""
    crop_height, crop_width = crop
    _, height, width = pixels.shape
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return pixels[:, top : top + crop_height, left : left + crop_width]
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    padded = np.zeros((pixels.shape[0], new_height, new_width), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
    padded[:, top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top) : min(new_height, top + crop_height), max(0, left) : min(new_width, left + crop_width)]
