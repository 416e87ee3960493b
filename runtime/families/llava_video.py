"""LLaVA-Video's host side: F frames sampled uniformly from a video, each as SigLIP takes it.

    video file / folder of frames ──runtime.video.load_video──> F frames (uniform sampling)
        each ──8-bit RGB, stretched to S x S (PIL, bicubic)──> rescale, normalize
        ──> pixel_values float32 [1, F, 3, S, S]
    position ids: LLaVA-1.5's, one row 0 .. T - 1.

Step for step what SigLIP's PIL image processor does to each frame (a resize to S x S, no crop),
as LLaVA-Video's own inference code processes its frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from runtime.families.base import HostFamily
from runtime.families.llava import LlavaHost
from runtime.preprocess import check_resample, rescale_and_normalize, stretch, to_rgb
from runtime.samples import sample_frames


class LlavaVideoHost(HostFamily):
    """LLaVA-Video: `frames` frames of S x S pixels, positions 0 .. T - 1 and T, T + 1, ... in decode."""

    name = "llava_video"
    input_kind = "video"
    checked_position_ids = LlavaHost.checked_position_ids

    def __init__(self, manifest: dict[str, Any]):
        super().__init__(manifest)
        section = manifest["preprocess"]
        self.frames = int(section["frames"])
        self.image_size = int(section["image_size"])
        self.resample: str = section["resample"]
        check_resample(self.resample)
        self.rescale_factor = float(section["rescale_factor"])
        self.image_mean = tuple(float(v) for v in section["image_mean"])
        self.image_std = tuple(float(v) for v in section["image_std"])

    def load(
        self, source: str | os.PathLike | Sequence[Image.Image], *, on_note: Callable[[str], None] | None = None
    ) -> list[Image.Image]:
        """The export's `frames` frames of a video file, a folder of frames or a list of images."""
        from runtime.video import load_video  # PyAV: imported by video artifacts only

        return load_video(source, self.frames, on_note=on_note)

    def sample(self) -> list[Image.Image]:
        return sample_frames(self.frames)

    def preprocess(
        self, frames: Sequence[Image.Image], *, on_note: Callable[[str], None] | None = None
    ) -> np.ndarray:
        """pixel_values float32 [1, F, 3, S, S] of the video's F frames.

        Raises:
            ValueError: not F PIL images; an empty, too large or too elongated frame.
        """
        self.check_frames(frames)
        hint = ", like every frame of the video"
        fitted = [
            stretch(frame, self.image_size, self.resample, on_note if i == 0 else None, hint=hint)
            for i, frame in enumerate(frames)
        ]
        normalized = [
            rescale_and_normalize(np.asarray(frame).transpose(2, 0, 1), self.rescale_factor, self.image_mean, self.image_std)
            for frame in fitted
        ]
        return np.stack(normalized)[None]

    def fit_image(self, frames: Sequence[Image.Image]) -> list[Image.Image]:
        """The frames in 8-bit RGB: SigLIP's processor resizes them to S x S itself."""
        self.check_frames(frames)
        return [to_rgb(frame) for frame in frames]

    def check_frames(self, frames: Sequence[Image.Image]) -> None:
        """Raise ValueError unless `frames` is the export's number of PIL images."""
        if isinstance(frames, Image.Image) or len(frames) != self.frames:
            got = "an image" if isinstance(frames, Image.Image) else f"{len(frames)} frames"
            raise ValueError(f"this artifact answers about videos of {self.frames} frames, got {got}")

    def model_view(self, image: Image.Image) -> Image.Image:
        return stretch(image, self.image_size, self.resample)
