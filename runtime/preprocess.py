"""CLIP image preprocessing in PIL + numpy, step for step what transformers' PIL CLIP processor does.

    image ──8-bit RGB (alpha over white)──> resize shortest edge to `size` (PIL, bicubic)
          ──> center crop to crop_size (zero padding if smaller) ──> x * rescale_factor (float64,
          then float32) ──> (x - mean) / std (float32) ──> pixel_values float32 [1, 3, H, W]

`load_image` bounds what it decodes (`MAX_IMAGE_PIXELS`, `MAX_ASPECT_RATIO`); 16-bit, 32-bit and
float images are scaled to 8 bits where transformers (PIL's convert) clips them.

No torch: this runs on devices that only have ONNX Runtime.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

# The most pixels an image may have, checked from its header before decoding. 8192 x 8192 holds every
# mainstream camera photo (50 MP phone sensors are 8160 x 6144, 61 MP full frame 9504 x 6336). PIL
# keeps at most 4 bytes a pixel (RGB(A), CMYK, I, F), so this also bounds the decoded image to
# 256 MiB, and the conversion to RGB adds at most about as much: memory a phone-class device running
# the model can spare. It is below PIL's own Image.MAX_IMAGE_PIXELS (89.5 MP), so this check comes first.
MAX_IMAGE_PIXELS = 8192 * 8192
# The most the longest edge may exceed the shortest. The CLIP center crop keeps a square of the
# shortest edge, so a 20:1 image already shows the model 1/20 of itself; panoramas (up to about
# 10:1) and long screenshots pass. It bounds the resize before the crop (1 x 30000 pixels would
# become 336 x 10,080,000) to a longest edge of 20 x the shortest.
MAX_ASPECT_RATIO = 20


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


def load_image(
    source: str | os.PathLike[str] | Image.Image, on_note: Callable[[str], None] | None = None
) -> Image.Image:
    """A decoded PIL image from a path or an image (returned as is).

    The size is checked against `MAX_IMAGE_PIXELS` and `MAX_ASPECT_RATIO` from the header, before
    anything is decoded. Of an image with several frames (GIF, APNG, WebP, TIFF pages) the first is
    decoded, and a note says so: `on_note(note)`, or `warnings.warn(note)` when `on_note` is None. A
    command line would pass `on_note=lambda note: print(f"note: {note}", file=sys.stderr)`, printing
    "note: photo.gif has 12 frames; using the first". An MPO (a JPEG photo carrying extra images such
    as depth or gain maps, as phones write them) is a photo, not an animation: no note.

    Raises:
        FileNotFoundError: nothing at the path.
        ValueError: the path is a folder, not a regular file, unreadable or empty; the file is not an
            image PIL can decode, or is damaged or truncated; the image is too large (also PIL's own
            `Image.MAX_IMAGE_PIXELS` check) or too elongated; `source` has the wrong type.
    """
    if isinstance(source, Image.Image):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"the image must be a path or a PIL image, got {type(source).__name__}")
    path = os.fspath(source)
    _check_path(path)
    try:
        file = open(path, "rb")
    except OSError as error:
        raise ValueError(f"image file {path} cannot be read ({error.strerror})") from None
    # PIL warns of images above Image.MAX_IMAGE_PIXELS (above ours unless a caller lowered it): an error
    # here. The filter, like any, is process-wide while load_image runs.
    with file, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _decoding(path):
            image = Image.open(file)
        _check_size(image.size, f"image {path}")
        with _decoding(path):
            frames = getattr(image, "n_frames", 1)
            image.load()
    if frames > 1 and image.format != "MPO":
        note = f"{path} has {frames} frames; using the first"
        if on_note is None:
            warnings.warn(note, stacklevel=2)
        else:
            on_note(note)
    return image


def _check_path(path: str) -> None:
    """Raise unless `path` is a non-empty regular file."""
    if os.path.isdir(path):
        raise ValueError(f"image {path} is a folder, not an image file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"image {path} is not a regular file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"image file {path} is empty")


@contextmanager
def _decoding(path: str) -> Iterator[None]:
    """PIL's errors while it reads `path`, as one-line ValueErrors."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"image {path} is too large: {error}") from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {path}: not an image file PIL can decode") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read image {path}: the file is damaged or truncated ({error})") from None


def _check_size(size: tuple[int, int], name: str) -> None:
    """Raise unless an image of `size` (width, height) is within the bounds; `name` starts the message."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"{name} is empty ({width} x {height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name} is too large: {width} x {height} = {width * height:,} pixels, the limit is {MAX_IMAGE_PIXELS:,}"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{name} is too elongated: {width} x {height} pixels, the limit is {MAX_ASPECT_RATIO}:1")


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """pixel_values float32 [1, 3, crop_height, crop_width] of one image.

    Raises:
        ValueError: the image is empty, has more than `MAX_IMAGE_PIXELS` or is more elongated than
            `MAX_ASPECT_RATIO`.
    """
    _check_size(image.size, "the image")
    rgb = _to_rgb(image)
    rgb = rgb.resize(_resized_size(rgb.width, rgb.height, config.size), resample=_RESAMPLE[config.resample])
    pixels = np.asarray(rgb).transpose(2, 0, 1)  # [3, H, W] uint8
    pixels = _center_crop(pixels, config.crop_size)
    scaled = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.image_std, dtype=np.float32)[:, None, None]
    return ((scaled - mean) / std)[None]


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, transparency composited onto white.

    8-bit modes take transformers' path (`convert_to_rgb`: PIL's convert, alpha over white), so they
    stay bit-exact with its processor, except where it errs, on purpose: it finds alpha by a band
    named "A", which misses premultiplied alpha (La, RGBa) and palettes with alpha (P with an RGBA
    palette); and PIL's convert clips 16-bit, 32-bit integer and float gray to 0..255, where
    `_gray_to_8bit` scales it.
    """
    if image.mode == "La":  # PIL converts it to LA only
        image = image.convert("LA")
    elif image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _gray_to_8bit(image)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _gray_to_8bit(image: Image.Image) -> Image.Image:
    """'L' of an 'I;16*', 'I' or 'F' image ('LA' when a pixel value is marked transparent, as in PNG).

    Values are scaled to 0..255 and rounded, out-of-range ones clipped, NaN read as 0:
      - 'I;16', 'I;16B', 'I;16L', 'I;16N': 0..65535 (x / 257).
      - 'I' (32-bit signed, no bit depth of its own): 0..255, 0..65535 or 0..2**31-1, the smallest
        range that holds its largest value. Most 'I' images are 16-bit data (PGM/PPM, TIFF) or 8-bit
        data widened; the latter, and 16-bit data that never exceeds 255, stay as they are, which is
        also what PIL's convert does with them.
      - 'F': 0..1 when no value is above 1, else 0..255.
    """
    raw = np.asarray(image)
    values = np.nan_to_num(raw.astype(np.float32), copy=False)
    peak = float(values.max())
    if image.mode == "F":
        top = 1.0 if peak <= 1 else 255.0
    elif image.mode == "I":
        top = next((limit for limit in (255.0, 65535.0) if peak <= limit), 2.0**31 - 1)
    else:
        top = 65535.0
    values *= 255 / top
    gray = Image.fromarray(np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8))
    transparency = image.info.get("transparency")
    if isinstance(transparency, int):
        alpha = Image.fromarray(np.where(raw == transparency, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray


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
