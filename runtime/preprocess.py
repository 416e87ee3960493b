"""Image loading and the steps every family's preprocessing shares, in PIL + numpy as transformers' PIL
image processors do them.

    path or PIL image ──load_image──> PIL image (size checked from the header before decoding)
    ──to_rgb──> 8-bit RGB (alpha over white) ──(the family's resize and crop)──>
    ──rescale_and_normalize──> x * rescale_factor (float64, then float32), (x - mean) / std (float32)

`load_image` bounds what it decodes (`MAX_IMAGE_PIXELS`, `MAX_ASPECT_RATIO`); 16-bit, 32-bit and
float images are scaled to 8 bits where transformers (PIL's convert) clips them. The family steps
are in `runtime.families`.

No torch: this runs on devices that only have ONNX Runtime.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

RESAMPLE = {
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
        check_size(image.size, f"image {path}")
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


def check_size(size: tuple[int, int], name: str) -> None:
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


def to_rgb(image: Image.Image) -> Image.Image:
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


def rescale_and_normalize(
    pixels: np.ndarray, rescale_factor: float, image_mean: tuple[float, ...], image_std: tuple[float, ...]
) -> np.ndarray:
    """float32 [3, H, W] of uint8 [3, H, W]: x * rescale_factor in float64 then float32, (x - mean) / std in float32."""
    scaled = (pixels.astype(np.float64) * rescale_factor).astype(np.float32)
    mean = np.asarray(image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(image_std, dtype=np.float32)[:, None, None]
    return (scaled - mean) / std


def stretch(
    image: Image.Image, side: int, resample: str, on_note: Callable[[str], None] | None = None, *, hint: str = ""
) -> Image.Image:
    """8-bit RGB at `side` x `side`: stretched, whatever the aspect ratio, for the families whose export
    has one fixed image grid; `on_note` hears when an image that is not square gets stretched (the
    note ends with `hint`, what the user can do about it).

    Raises:
        ValueError: the image is empty, too large or too elongated.
    """
    check_size(image.size, "the image")
    if on_note is not None and image.width != image.height:
        on_note(
            f"the image ({image.width} x {image.height}) is stretched to {side} x {side}, the one size "
            f"this artifact was exported for{hint}"
        )
    return to_rgb(image).resize((side, side), resample=RESAMPLE[resample])


def check_resample(name: str) -> None:
    """Raise ValueError unless `name` is a PIL filter of `RESAMPLE`."""
    if name not in RESAMPLE:
        raise ValueError(f"preprocess.resample {name!r} is not one of {', '.join(RESAMPLE)}")
