"""CLIP image preprocessing in PIL + numpy, step for step what transformers' PIL CLIP processor does.

    image ──RGB (alpha over white)──> resize shortest edge to `size` (PIL, bicubic)
          ──> center crop to crop_size (zero padding if smaller) ──> x * rescale_factor (float64,
          then float32) ──> (x - mean) / std (float32) ──> pixel_values float32 [1, 3, H, W]

No torch: this runs on devices that only have ONNX Runtime.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """The manifest's `preprocess` section.

    Attributes:
        size: the shortest edge after resizing.
        crop_size: (height, width) of the center crop.
        resample: PIL filter name, one of `_RESAMPLE`.
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
        if self.resample not in _RESAMPLE:
            raise ValueError(f"preprocess.resample {self.resample!r} is not one of {', '.join(_RESAMPLE)}")
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


def load_image(source: str | os.PathLike | Image.Image, *, on_note=None) -> Image.Image:
    """A decoded PIL image from a path or an image.

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: the file is not an image PIL can decode, or `source` has the wrong type.
    """
    if isinstance(source, Image.Image):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"the image must be a path or a PIL image, got {type(source).__name__}")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"image file {os.fspath(source)} does not exist")
    try:
        with Image.open(source) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {os.fspath(source)}: {error}") from None


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """pixel_values float32 [1, 3, crop_height, crop_width] of one image."""
    if image.width < 1 or image.height < 1:
        raise ValueError(f"the image is empty ({image.width} x {image.height} pixels)")
    rgb = _to_rgb(image)
    rgb = rgb.resize(_resized_size(rgb.width, rgb.height, config.size), resample=_RESAMPLE[config.resample])
    pixels = np.asarray(rgb).transpose(2, 0, 1)  # [3, H, W] uint8
    pixels = _center_crop(pixels, config.crop_size)
    scaled = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.image_std, dtype=np.float32)[:, None, None]
    return ((scaled - mean) / std)[None]


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resized_size(width: int, height: int, shortest: int) -> tuple[int, int]:
    """(width, height) with the shortest edge at `shortest`, the other truncated like torchvision."""
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
