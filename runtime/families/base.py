"""The host side of a model family: image preprocessing and position ids, numpy only (no torch).

    image ──HostFamily.preprocess──> pixel_values (the family's shape)
    input_ids, image_positions ──HostFamily.position_ids──> position_ids int64 [rows, 1, T], rope delta

Each family reads what it needs from the artifact's manifest (`preprocess`, `geometry`). The
prompt itself is the manifest's template, tokenized by `runtime.tokenizer` for every family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PromptInputs:
    """Everything the graphs take for one prompt with one image.

    Attributes:
        input_ids: int64 [1, T], the N image placeholders included.
        pixel_values: float32, the vision encoder's input (shape: the family's).
        image_positions: int64 [N], where the image tokens sit in the sequence, ascending.
        position_ids: int64 [rows, 1, T], the prompt's position ids (1 row: RoPE, 3: M-RoPE).
        rope_delta: the s-th generated token (s = 0, 1, ...) sits at position T + s + rope_delta
            on every row: positions continue from the full prompt, whatever was pruned.
    """

    input_ids: np.ndarray
    pixel_values: np.ndarray
    image_positions: np.ndarray
    position_ids: np.ndarray
    rope_delta: int

    @property
    def num_tokens(self) -> int:
        """T, the prompt length."""
        return int(self.input_ids.shape[1])

    def decode_position_ids(self, step: int) -> np.ndarray:
        """int64 [rows, 1, 1] of the `step`-th generated token that goes through decode (step 0:
        the token the prefill chose)."""
        rows = self.position_ids.shape[0]
        return np.full((rows, 1, 1), self.num_tokens + step + self.rope_delta, dtype=np.int64)


class HostFamily(ABC):
    """Preprocessing and position ids of one model family, configured from an artifact's manifest.

    Class attributes:
        name: the family's name, as `models.families` registers it and the manifest records it.
    """

    name: ClassVar[str]

    def __init__(self, manifest: dict[str, Any]):
        geometry = manifest["geometry"]
        self.grid: tuple[int, int] = tuple(geometry["grid"])
        self.num_image_tokens: int = geometry["num_image_tokens"]
        self.pixel_values_shape: tuple[int, ...] = tuple(geometry["pixel_values_shape"])

    @abstractmethod
    def preprocess(self, image: Image.Image, *, on_note: Callable[[str], None] | None = None) -> np.ndarray:
        """pixel_values float32 of `pixel_values_shape` for one image (any size: see the family);
        `on_note` receives what the user should know (e.g. that the image was stretched)."""

    def fit_image(self, image: Image.Image) -> Image.Image:
        """The image as the family brings it to the export's fixed geometry before the steps its
        transformers processor would take too (identity where that processor takes any image the
        same way): `preprocess(image)` equals the transformers processor's output of
        `fit_image(image)`, which the parity check verifies."""
        return image

    @abstractmethod
    def position_ids(self, num_tokens: int, image_positions: np.ndarray) -> tuple[np.ndarray, int]:
        """(position_ids int64 [rows, 1, T], rope_delta) of a T-token prompt with the image tokens
        at `image_positions`."""

    def check_pixel_values(self, pixel_values: np.ndarray) -> None:
        """Raise ValueError unless `pixel_values` has the artifact's shape."""
        if tuple(pixel_values.shape) != self.pixel_values_shape:
            raise ValueError(
                f"pixel_values must be {list(self.pixel_values_shape)} for this model, got {list(pixel_values.shape)}"
            )
