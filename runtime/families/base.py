"""The host side of a model family: image preprocessing and position ids, numpy only (no torch).

    image ──HostFamily.preprocess──> pixel_values (the family's shape)
    input_ids, image_positions, image_tokens ──HostFamily.position_ids──> position_ids int64
        [rows, 1, T], rope delta   (image_tokens: which of the image's N tokens the prompt holds,
        known once the vision encoder ran: all N, or the R it kept when it selects)

Each family reads what it needs from the artifact's manifest (`preprocess`, `geometry`). The
prompt itself is the manifest's template, tokenized by `runtime.tokenizer` for every family.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from runtime.preprocess import load_image
from runtime.samples import sample_image

# File suffixes of videos, which a model of images refuses by name rather than as unreadable images.
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})


@dataclass(frozen=True)
class Positions:
    """The position ids of one prompt and of the tokens generated after it.

    Attributes:
        prompt: int64 [rows, 1, T], the prompt's position ids (1 row: RoPE, 3: M-RoPE).
        rope_delta: the s-th generated token (s = 0, 1, ...) sits at position T + s + rope_delta
            on every row: positions continue from the full prompt, whatever the prefill prunes.
    """

    prompt: np.ndarray
    rope_delta: int

    def decode(self, step: int) -> np.ndarray:
        """int64 [rows, 1, 1] of the `step`-th generated token that goes through decode (step 0:
        the token the prefill chose)."""
        rows, _, length = self.prompt.shape
        return np.full((rows, 1, 1), length + step + self.rope_delta, dtype=np.int64)


@dataclass(frozen=True)
class PromptInputs:
    """Everything the graphs take for one prompt with one image.

    Attributes:
        input_ids: int64 [1, T], the image placeholders included (N, or R when the vision graph
            selects the image tokens).
        pixel_values: float32, the vision encoder's input (shape: the family's).
        image_positions: int64 [N or R], where the image tokens sit in the sequence, ascending.
        host: the family's host side, which makes the position ids (`positions`).
    """

    input_ids: np.ndarray
    pixel_values: np.ndarray
    image_positions: np.ndarray
    host: HostFamily

    @property
    def num_tokens(self) -> int:
        """T, the prompt length."""
        return int(self.input_ids.shape[1])

    def positions(self, image_tokens: np.ndarray | None = None) -> Positions:
        """The position ids, once the vision encoder said which of the image's N tokens the prompt
        holds (`image_tokens`, int64 ascending, one per image position; None: all of them)."""
        if image_tokens is None:
            image_tokens = np.arange(self.image_positions.size)
        return Positions(*self.host.position_ids(self.num_tokens, self.image_positions, image_tokens))


@dataclass(frozen=True)
class ViewPicture:
    """One view of the image tokens drawn on a picture (`runtime.show`).

    Attributes:
        picture: 8-bit RGB, tiled evenly by `cells`, row-major.
        grid: (H, W) of the view's tokens in the sequence.
        cells: (H, W') of those that are picture cells: the first W' <= W columns of each row (the
            others, LLaVA-NeXT's newline tokens, cover no part of the picture).
    """

    picture: Image.Image
    grid: tuple[int, int]
    cells: tuple[int, int]


class HostFamily(ABC):
    """Preprocessing and position ids of one model family, configured from an artifact's manifest.

    Class attributes:
        name: the family's name, as `models.families` registers it and the manifest records it.
        input_kind: "image", or "video" for a family that reads frames (`load`).
    """

    name: ClassVar[str]
    # What one prompt is about: "image", or "video" (a family whose `load` reads frames).
    input_kind: ClassVar[str] = "image"

    def __init__(self, manifest: dict[str, Any]):
        geometry = manifest["geometry"]
        grid = geometry["grid"]
        # (H, W) of one view, or the views ((H1, W1), ...) in sequence order.
        self.grid: tuple[int, int] | tuple[tuple[int, int], ...] = (
            tuple(tuple(view) for view in grid) if isinstance(grid[0], list) else tuple(grid)
        )
        self.num_image_tokens: int = geometry["num_image_tokens"]
        self.pixel_values_shape: tuple[int, ...] = tuple(geometry["pixel_values_shape"])

    def load(self, source: str | os.PathLike | Image.Image, *, on_note: Callable[[str], None] | None = None) -> Any:
        """The family's visual input from a path (or what is already loaded): one image here
        (`runtime.preprocess.load_image`); a video family's frames.

        Raises:
            FileNotFoundError / ValueError: a file that does not exist or cannot be read as the
                family's input (a video given to a model of images says so).
        """
        if not isinstance(source, Image.Image) and Path(source).suffix.lower() in VIDEO_SUFFIXES:
            raise ValueError(
                f"{source} is a video; this artifact answers about images (a video model, e.g. llava-video-7b, "
                "takes videos with --video)"
            )
        return load_image(source, on_note=on_note)

    def sample(self) -> Any:
        """The fixed visual input of parity checks and benchmarks (`runtime.samples`)."""
        return sample_image()

    @abstractmethod
    def preprocess(self, image: Image.Image, *, on_note: Callable[[str], None] | None = None) -> np.ndarray:
        """pixel_values float32 of `pixel_values_shape` for one image (any size: see the family);
        `on_note` receives what the user should know (e.g. that the image was stretched)."""

    @abstractmethod
    def model_view(self, image: Image.Image) -> Image.Image:
        """The 8-bit RGB picture the model's image tokens cover, as `preprocess` crops and resizes
        `image`: its `grid` of tokens tiles it evenly, row-major (`runtime.show`)."""

    def view_pictures(self, image: Image.Image) -> list[ViewPicture]:
        """Each view of the image tokens on the picture it covers (`runtime.show`): one grid on
        `model_view` unless the family has several views."""
        return [ViewPicture(self.model_view(image), self.grid, self.grid)]

    def fit_image(self, image: Image.Image) -> Image.Image:
        """The image as the family brings it to the export's fixed geometry before the steps its
        transformers processor would take too (identity where that processor takes any image the
        same way): `preprocess(image)` equals the transformers processor's output of
        `fit_image(image)`, which the parity check verifies."""
        return image

    def position_ids(
        self, num_tokens: int, image_positions: np.ndarray, image_tokens: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """(position_ids int64 [rows, 1, T], rope_delta) of a T-token prompt with image tokens at
        `image_positions`: the tokens `image_tokens` (int64, ascending, indices into the image's N
        tokens in the order of `grid`) of the image, all N or those the vision graph kept.

        Raises:
            ValueError: `image_tokens` is not one ascending index into the N per image position.
        """
        tokens = np.asarray(image_tokens)
        valid = tokens.ndim == 1 and tokens.size == image_positions.size and tokens.size > 0
        if not valid or tokens[0] < 0 or tokens[-1] >= self.num_image_tokens or np.any(np.diff(tokens) <= 0):
            raise ValueError(
                f"image tokens must be {image_positions.size} ascending indices in [0, {self.num_image_tokens}), "
                f"got {tokens.tolist() if tokens.size <= 16 else tokens.shape}"
            )
        return self.checked_position_ids(num_tokens, image_positions, tokens)

    @abstractmethod
    def checked_position_ids(
        self, num_tokens: int, image_positions: np.ndarray, image_tokens: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """`position_ids` of the family, on image tokens already checked."""

    def check_pixel_values(self, pixel_values: np.ndarray) -> None:
        """Raise ValueError unless `pixel_values` has the artifact's shape."""
        if tuple(pixel_values.shape) != self.pixel_values_shape:
            raise ValueError(
                f"pixel_values must be {list(self.pixel_values_shape)} for this model, got {list(pixel_values.shape)}"
            )
