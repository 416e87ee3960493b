"""Qwen2-VL's host side: preprocessing into flattened patches, M-RoPE position ids.

    image ──8-bit RGB (alpha over white)──> resize to the export's S x S (PIL, bicubic; an image of
          another aspect ratio is stretched, not cropped) ──> rescale, normalize ──> patchify:
          pixel_values float32 [(S/p)^2, 3 * tp * p * p], patches in 2 x 2 merge blocks

Step for step what transformers' PIL Qwen2-VL image processor does for an S x S image. That
processor would pick another grid for another aspect ratio ("dynamic resolution"); an export has
one fixed grid, so the runtime stretches every image to S x S first.

M-RoPE position ids as transformers' `get_rope_index` makes them for one image: text before the
image counts 0, 1, ...; image token (r, c) of the merged H x W grid gets (s, s + r, s + c), s the
image's first position; the text after it continues from s + max(H, W). Decode continues from the
largest position + 1, whatever was pruned. When the vision graph selects the image tokens
(DivPrune), the prompt holds only the R kept ones, each with the (s, s + r, s + c) of its place in
the grid, and the text after them continues from s + max(H, W) as for the whole image: the M-RoPE
counterpart of DivPrune's contiguous positions (the sequence has no gaps; the 2-D positions are
those the model was trained with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from runtime.families.base import HostFamily
from runtime.preprocess import check_resample, rescale_and_normalize, stretch


@dataclass(frozen=True)
class PatchConfig:
    """The manifest's `preprocess` section of a Qwen2-VL artifact.

    Attributes:
        image_size: S, the side every image is resized to.
        resample: PIL filter name, one of `runtime.preprocess.RESAMPLE`.
        rescale_factor, image_mean, image_std: as for CLIP.
        patch_size: p, pixels per patch side. temporal_patch_size: tp, frames per patch (an image
            is repeated tp times). merge_size: patches per merged token side.
    """

    image_size: int
    resample: str
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    patch_size: int
    temporal_patch_size: int
    merge_size: int

    def __post_init__(self) -> None:
        check_resample(self.resample)
        if self.image_size % (self.patch_size * self.merge_size):
            raise ValueError(
                f"preprocess.image_size {self.image_size} is not a multiple of {self.patch_size * self.merge_size}"
            )

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> PatchConfig:
        return cls(
            image_size=int(section["image_size"]),
            resample=section["resample"],
            rescale_factor=float(section["rescale_factor"]),
            image_mean=tuple(float(v) for v in section["image_mean"]),
            image_std=tuple(float(v) for v in section["image_std"]),
            patch_size=int(section["patch_size"]),
            temporal_patch_size=int(section["temporal_patch_size"]),
            merge_size=int(section["merge_size"]),
        )


class Qwen2VLHost(HostFamily):
    """Qwen2-VL: flattened patches of the S x S image, M-RoPE positions with a rope delta."""

    name = "qwen2_vl"

    def __init__(self, manifest: dict[str, Any]):
        super().__init__(manifest)
        self.config = PatchConfig.from_manifest(manifest["preprocess"])

    def preprocess(self, image: Image.Image, *, on_note: Callable[[str], None] | None = None) -> np.ndarray:
        return preprocess_patches(image, self.config, on_note)

    def fit_image(self, image: Image.Image) -> Image.Image:
        return stretch(image, self.config.image_size, self.config.resample)

    model_view = fit_image  # the patches tile the stretched S x S image

    def checked_position_ids(
        self, num_tokens: int, image_positions: np.ndarray, image_tokens: np.ndarray
    ) -> tuple[np.ndarray, int]:
        start = int(image_positions[0])
        if not np.array_equal(image_positions, start + np.arange(image_positions.size)):
            raise ValueError("Qwen2-VL's image tokens must form one contiguous block")
        return mrope_position_ids(num_tokens, start, self.grid, image_tokens)


def preprocess_patches(
    image: Image.Image, config: PatchConfig, on_note: Callable[[str], None] | None = None
) -> np.ndarray:
    """pixel_values float32 [(S/p)^2, 3 * tp * p * p] of one image (stretched to S x S: `on_note`).

    Raises:
        ValueError: the image is empty, too large or too elongated (`runtime.preprocess`).
    """
    image = stretch(image, config.image_size, config.resample, on_note, hint=" (export another size with --image-size)")
    pixels = np.asarray(image).transpose(2, 0, 1)  # [3, S, S] uint8
    normalized = rescale_and_normalize(pixels, config.rescale_factor, config.image_mean, config.image_std)
    return patchify(normalized, config.patch_size, config.merge_size, config.temporal_patch_size)


def patchify(image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """[C, H, W] -> [(H/p) * (W/p), C * tp * p * p]: merge blocks row-major, patches row-major inside a
    block, features in (channel, frame, row, column) order, the image repeated over the tp frames."""
    channels, height, width = image.shape
    rows, cols = height // patch_size, width // patch_size
    patches = image.reshape(
        channels, rows // merge_size, merge_size, patch_size, cols // merge_size, merge_size, patch_size
    )
    patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # (block row, block col, row, col, C, py, px)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], temporal_patch_size, *patches.shape[5:]))
    return np.ascontiguousarray(patches.reshape(rows * cols, channels * temporal_patch_size * patch_size**2))


def mrope_position_ids(
    seq_len: int, image_start: int, grid: tuple[int, int], image_tokens: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """M-RoPE position ids of a prompt with one image, as transformers' `get_rope_index` makes them.

    Args:
        seq_len: T, the prompt length. image_start: position of the first image token.
        grid: (H, W), the merged token grid.
        image_tokens: the grid's tokens the prompt holds (row-major indices, ascending); None: all
            H * W of them.
    Returns:
        position_ids: int64 [3, 1, T] (temporal, height, width rows).
        rope_delta: the generated token s (s = 0, 1, ...) is at T + s + rope_delta on all rows.
    """
    height, width = grid
    tokens = np.arange(height * width) if image_tokens is None else np.asarray(image_tokens, dtype=np.int64)
    n = tokens.size
    if not 0 <= image_start <= seq_len - n:
        raise ValueError(f"an image block of {n} tokens at {image_start} does not fit a prompt of {seq_len} tokens")
    rows, cols = np.divmod(tokens, width)
    image = image_start + np.stack([np.zeros(n, dtype=np.int64), rows, cols])  # [3, N]
    suffix = image_start + max(height, width) + np.arange(seq_len - image_start - n)
    position_ids = np.concatenate(
        [np.broadcast_to(np.arange(image_start), (3, image_start)), image, np.broadcast_to(suffix, (3, suffix.size))],
        axis=1,
    ).astype(np.int64)
    return position_ids[:, None], int(position_ids.max()) + 1 - seq_len
