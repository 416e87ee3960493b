"""Hostile images on the runtime's image path: every PIL mode to 8-bit RGB, animated images, paths
that are not image files, and memory bombs (in a child process under a memory limit)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from runtime.families.llava import PreprocessConfig, preprocess_image
from runtime.preprocess import MAX_ASPECT_RATIO, load_image
from tests.export.fixtures import REPO

WHITE = (255, 255, 255)


def raw(
    mode: str,
    size: tuple[int, int],
    data: bytes | np.ndarray,
    palette: list[int] | None = None,
    palette_mode: str = "RGB",
) -> Image.Image:
    """An image of `mode` from its raw bytes (or an array's), optionally with a palette."""
    image = Image.frombytes(mode, size, data if isinstance(data, bytes) else data.tobytes())
    if palette is not None:
        image.putpalette(palette, palette_mode)
    return image


def with_info(image: Image.Image, **info: object) -> Image.Image:
    image.info.update(info)
    return image


def reopened(image: Image.Image, fmt: str, **params: object) -> Image.Image:
    """`image` saved as `fmt` and decoded again: the mode PIL's decoder gives."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def gray(*values: int) -> list[tuple[int, int, int]]:
    return [(v, v, v) for v in values]


# A 16-bit gradient of 4096 steps; PIL's convert clips it to 0..255, nearly all of it white.
GRADIENT = np.linspace(0, 65535, 4096).round().astype(np.uint16).reshape(64, 64)
GRADIENT_RGB = np.repeat(np.round(GRADIENT / 257)[..., None], 3, axis=2)
PALETTE = [255, 0, 0, 0, 0, 255]

# name: (image, expected RGB: a row of pixels, or an [H, W, 3] array)
MODES: dict[str, tuple[Image.Image, list[tuple[int, int, int]] | np.ndarray]] = {
    "1": (Image.fromarray(np.array([[False, True]])), gray(0, 255)),
    "L": (Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8)), gray(0, 100, 255)),
    "L, transparent value": (with_info(raw("L", (2, 1), bytes([7, 8])), transparency=7), [WHITE, *gray(8)]),
    "LA": (raw("LA", (2, 1), bytes([100, 255, 100, 0])), [*gray(100), WHITE]),
    "La (premultiplied)": (raw("La", (2, 1), bytes([100, 255, 0, 0])), [*gray(100), WHITE]),
    "P": (raw("P", (2, 1), bytes([0, 1]), PALETTE), [(255, 0, 0), (0, 0, 255)]),
    "P, transparent index": (with_info(raw("P", (2, 1), bytes([0, 1]), PALETTE), transparency=1), [(255, 0, 0), WHITE]),
    "P, RGBA palette": (raw("P", (2, 1), bytes([0, 1]), [255, 0, 0, 255, 0, 0, 255, 0], "RGBA"), [(255, 0, 0), WHITE]),
    "PA": (raw("PA", (2, 1), bytes([0, 255, 1, 0]), PALETTE), [(255, 0, 0), WHITE]),
    "RGB": (raw("RGB", (2, 1), bytes([10, 20, 30, 0, 0, 255])), [(10, 20, 30), (0, 0, 255)]),
    "RGB, transparent color": (
        with_info(raw("RGB", (2, 1), bytes([10, 20, 30, 0, 0, 255])), transparency=(0, 0, 255)),
        [(10, 20, 30), WHITE],
    ),
    "RGBA": (raw("RGBA", (2, 1), bytes([10, 20, 30, 255, 10, 20, 30, 0])), [(10, 20, 30), WHITE]),
    "RGBa (premultiplied)": (raw("RGBa", (2, 1), bytes([10, 20, 30, 255, 0, 0, 0, 0])), [(10, 20, 30), WHITE]),
    "RGBX": (raw("RGBX", (1, 1), bytes([10, 20, 30, 0])), [(10, 20, 30)]),
    "CMYK": (raw("CMYK", (3, 1), bytes([0, 255, 255, 0, 0, 0, 0, 255, 0, 0, 0, 0])), [(255, 0, 0), (0, 0, 0), WHITE]),
    "YCbCr": (raw("YCbCr", (3, 1), bytes([255, 128, 128, 0, 128, 128, 128, 128, 128])), gray(255, 0, 128)),
    # white and black (raw a* and b* are signed: 0 is neutral); PIL's conversion is one off
    "LAB": (raw("LAB", (2, 1), bytes([255, 0, 0, 0, 0, 0])), [(254, 255, 254), (1, 0, 1)]),
    "HSV": (
        raw("HSV", (4, 1), bytes([0, 255, 255, 85, 255, 255, 170, 255, 255, 0, 0, 128])),
        [(255, 0, 0), (0, 255, 0), (0, 0, 255), *gray(128)],
    ),
    "I;16": (Image.fromarray(GRADIENT), GRADIENT_RGB),
    "I;16B": (raw("I;16B", (64, 64), GRADIENT.astype(">u2")), GRADIENT_RGB),
    "I;16L": (raw("I;16L", (64, 64), GRADIENT.astype("<u2")), GRADIENT_RGB),
    "I;16N": (raw("I;16N", (64, 64), GRADIENT), GRADIENT_RGB),
    "I;16 PNG": (reopened(Image.fromarray(GRADIENT), "PNG"), GRADIENT_RGB),
    "I;16 PNG, transparent value": (
        reopened(Image.fromarray(np.array([[257, 16384]], dtype=np.uint16)), "PNG", transparency=257),
        [WHITE, *gray(64)],
    ),
    "I;16 TIFF": (reopened(Image.fromarray(GRADIENT), "TIFF"), GRADIENT_RGB),
    "I, 16-bit PGM": (reopened(Image.fromarray(GRADIENT), "PPM"), GRADIENT_RGB),
    "I, 16-bit values": (Image.fromarray(GRADIENT.astype(np.int32)), GRADIENT_RGB),
    "I, 8-bit values": (Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32)), gray(0, 100, 255)),
    "I, 32-bit values": (Image.fromarray(np.array([[-5, 2**29, 2**31 - 1]], dtype=np.int32)), gray(0, 64, 255)),
    "F, 0..1": (Image.fromarray(np.array([[0, 0.2, 1]], dtype=np.float32)), gray(0, 51, 255)),
    "F, 0..255": (Image.fromarray(np.array([[0, 100.4, 255, 300]], dtype=np.float32)), gray(0, 100, 255, 255)),
    "F, NaN and negative": (Image.fromarray(np.array([[np.nan, 1, -1]], dtype=np.float32)), gray(0, 255, 0)),
    "F TIFF": (reopened(Image.fromarray(GRADIENT.astype(np.float32) / 65535), "TIFF"), GRADIENT_RGB),
}


def rgb_of(image: Image.Image) -> np.ndarray:
    """The [H, W, 3] RGB values `preprocess_image` computes, through a config that leaves them as they are."""
    identity = PreprocessConfig(
        size=min(image.size),
        crop_size=(image.height, image.width),
        resample="nearest",
        rescale_factor=1.0,
        image_mean=(0.0, 0.0, 0.0),
        image_std=(1.0, 1.0, 1.0),
    )
    return preprocess_image(image, identity)[0].transpose(1, 2, 0)


@pytest.mark.parametrize("name", MODES)
def test_every_mode_to_8_bit_rgb(name):
    image, expected = MODES[name]
    expected = np.asarray(expected, dtype=np.float32).reshape(image.height, image.width, 3)
    assert np.array_equal(rgb_of(image), expected)


def random_image(mode: str, seed: int) -> Image.Image:
    """40 x 30 random pixels of an 8-bit mode (a random palette for P and PA)."""
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = np.random.default_rng(seed).integers(0, 256, size=(30, 40, bands), dtype=np.uint8)
    if mode == "1":
        return Image.fromarray(data[..., 0] > 127)
    image = Image.frombytes(mode, (40, 30), data.tobytes())
    if mode in ("P", "PA"):
        image.putpalette(np.random.default_rng(seed + 1).integers(0, 256, size=768, dtype=np.uint8).tobytes())
    return image


# 8-bit modes that transformers' CLIP processor converts right: ours are bit-exact. (It misses
# premultiplied alpha and RGBA palettes, and clips deeper modes: the cases above.)
SAME_AS_TRANSFORMERS = {
    **{mode: random_image(mode, seed) for seed, mode in enumerate(["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX"])},
    **{mode: random_image(mode, seed) for seed, mode in enumerate(["CMYK", "YCbCr", "LAB", "HSV"], start=10)},
    "L, transparent value": with_info(random_image("L", 20), transparency=7),
    "P, transparent index": with_info(random_image("P", 21), transparency=3),
    "RGB, transparent color": with_info(  # 8 colors, one of them transparent
        Image.fromarray(np.asarray(random_image("RGB", 23)) // 128 * 255), transparency=(0, 0, 0)
    ),
    "I, 8-bit values": Image.fromarray(np.asarray(random_image("L", 22)).astype(np.int32)),
}


@pytest.fixture(scope="module")
def clip_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


@pytest.mark.parametrize("name", SAME_AS_TRANSFORMERS)
def test_8_bit_modes_are_bit_exact_with_transformers(name, clip_processor):
    config = PreprocessConfig(
        size=336,
        crop_size=(336, 336),
        resample="bicubic",
        rescale_factor=clip_processor.rescale_factor,
        image_mean=tuple(clip_processor.image_mean),
        image_std=tuple(clip_processor.image_std),
    )
    image = SAME_AS_TRANSFORMERS[name]
    expected = clip_processor(images=image, return_tensors="np")["pixel_values"]
    assert np.array_equal(preprocess_image(image, config), expected)


FRAMES = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def save_frames(path: Path, **params: object) -> None:
    images = [Image.new("RGB", (8, 6), color) for color in FRAMES]
    images[0].save(path, save_all=True, append_images=images[1:], **params)


# file name: (how it is written, whether load_image notes that it uses the first of 3 frames)
ANIMATED: dict[str, tuple[Callable[[Path], None], bool]] = {
    "photo.gif": (save_frames, True),
    "photo.png": (save_frames, True),  # APNG
    "photo.webp": (lambda path: save_frames(path, lossless=True), True),
    "pages.tiff": (save_frames, True),
    "photo.mpo": (lambda path: save_frames(path, format="MPO"), False),  # a photo with a depth map, as phones write
    "still.png": (lambda path: Image.new("RGB", (8, 6), FRAMES[0]).save(path), False),
}


@pytest.mark.parametrize("name", ANIMATED)
def test_first_frame_with_a_note(name, tmp_path):
    write, noted = ANIMATED[name]
    path = tmp_path / name
    write(path)
    notes: list[str] = []
    image = load_image(path, on_note=notes.append)
    assert notes == ([f"{path} has 3 frames; using the first"] if noted else [])
    if name != "photo.mpo":  # JPEG: not exact
        assert np.array_equal(np.asarray(image.convert("RGB")), np.full((6, 8, 3), FRAMES[0], dtype=np.uint8))


def test_notes_are_warnings_by_default(tmp_path):
    save_frames(tmp_path / "photo.gif")
    with pytest.warns(UserWarning, match="photo.gif has 3 frames; using the first"):
        load_image(tmp_path / "photo.gif")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


PHOTO = png_bytes(random_image("RGB", 30))


def unreadable(path: Path) -> None:
    path.write_bytes(PHOTO)
    path.chmod(0)


# file name: (how it is made, the exception, words of its message)
BAD_FILES: dict[str, tuple[Callable[[Path], object], type[Exception], str]] = {
    "folder.png": (Path.mkdir, ValueError, "folder.png is a folder, not an image file"),
    "missing.png": (lambda path: None, FileNotFoundError, "missing.png does not exist"),
    "dangling.png": (lambda path: path.symlink_to(path.with_name("gone.png")), FileNotFoundError, "does not exist"),
    "empty.png": (Path.touch, ValueError, "empty.png is empty"),
    "text.jpg": (lambda path: path.write_text("not a jpeg"), ValueError, "not an image file PIL can decode"),
    "header.png": (lambda path: path.write_bytes(PHOTO[:30]), ValueError, "header.png: not an image file PIL can"),
    "truncated.png": (lambda path: path.write_bytes(PHOTO[:200]), ValueError, "the file is damaged or truncated"),
    "unreadable.png": (unreadable, ValueError, "unreadable.png cannot be read (Permission denied)"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files(name, tmp_path):
    make, error, words = BAD_FILES[name]
    if name == "unreadable.png" and os.geteuid() == 0:
        pytest.skip("root reads every file")
    make(tmp_path / name)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_image(tmp_path / name)


def test_a_device_is_not_an_image_file():
    with pytest.raises(ValueError, match="/dev/null is not a regular file"):
        load_image("/dev/null")


def test_not_a_path():
    with pytest.raises(ValueError, match="path or a PIL image"):
        load_image(np.zeros((3, 3)))


def test_a_path_decodes_to_the_same_pixels(tmp_path):
    (tmp_path / "photo.png").write_bytes(PHOTO)
    assert np.array_equal(np.asarray(load_image(tmp_path / "photo.png")), np.asarray(random_image("RGB", 30)))


def bilevel_png(path: Path, width: int, height: int) -> None:
    """A black 1-bit PNG of any size, written without the pixels in memory (30000 x 30000: 0.5 MB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, left = zlib.compressobj(1), height * (1 + (width + 7) // 8)  # each row: filter byte + bits
    parts = []
    while left:
        parts.append(compressor.compress(bytes(min(left, 1 << 22))))
        left -= min(left, 1 << 22)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = b"".join(parts) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def rgb_png(path: Path, width: int, height: int) -> None:
    Image.new("RGB", (width, height)).save(path)


# name: (file writer, width, height, None to be accepted, else words of the error)
BOMBS: dict[str, tuple[Callable[[Path, int, int], None], int, int, str | None]] = {
    "1 x 30000 (169 bytes, was 23.5 GB)": (rgb_png, 1, 30000, "1 x 30000 pixels, the limit is 20:1"),
    "30000 x 1": (rgb_png, 30000, 1, "too elongated: 30000 x 1 pixels"),
    "1 x 4000 (was 4.5 GB)": (rgb_png, 1, 4000, "too elongated: 1 x 4000 pixels"),
    "1 x 20, the longest accepted": (rgb_png, 1, MAX_ASPECT_RATIO, None),
    "8192 x 8192, the largest accepted": (bilevel_png, 8192, 8192, None),
    "8193 x 8192": (bilevel_png, 8193, 8192, "too large: 8193 x 8192 = 67,117,056 pixels, the limit is 67,108,864"),
    "10000 x 10000 (PIL's warning)": (bilevel_png, 10_000, 10_000, "too large: Image size (100000000 pixels) exceeds"),
    "30000 x 30000 (PIL's error)": (bilevel_png, 30_000, 30_000, "too large: Image size (900000000 pixels) exceeds"),
}
# The child's address space: the largest accepted image needs about 0.5 GiB; a bomb, many.
CHILD_MEMORY = 1 << 30
CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from PIL import Image
from runtime.families.llava import PreprocessConfig, preprocess_image
from runtime.preprocess import load_image
config = PreprocessConfig(336, (336, 336), "bicubic", 1 / 255, (0.5,) * 3, (0.5,) * 3)
for path in sys.argv[2:]:
    try:
        shape = preprocess_image(load_image(path), config).shape
        print(json.dumps([path, f"pixel_values {shape}"]), flush=True)
    except Exception as error:
        print(json.dumps([path, f"{type(error).__name__}: {error}"]), flush=True)
"""


@pytest.fixture(scope="module")
def bomb_outcomes(tmp_path_factory) -> dict[str, str]:
    """name: what loading and preprocessing the image did in a child limited to `CHILD_MEMORY`."""
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for number, (name, (write, width, height, _)) in enumerate(BOMBS.items()):
        paths[name] = folder / f"bomb{number}.png"
        write(paths[name], width, height)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(CHILD_MEMORY), *map(str, paths.values())],
        cwd=REPO,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes = dict(json.loads(line) for line in child.stdout.splitlines())
    missing = f"no outcome; the child said:\n{child.stderr}"
    return {name: outcomes.get(str(path), missing) for name, path in paths.items()}


@pytest.mark.parametrize("name", BOMBS)
def test_memory_bombs_fail_fast(name, bomb_outcomes):
    words = BOMBS[name][3]
    if words is None:
        assert bomb_outcomes[name] == "pixel_values (1, 3, 336, 336)"
    else:
        assert bomb_outcomes[name].startswith("ValueError: image ") and words in bomb_outcomes[name]


def test_an_image_in_memory_is_bounded_too():
    config = PreprocessConfig(336, (336, 336), "bicubic", 1 / 255, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="the image is too elongated: 1 x 4000 pixels, the limit is 20:1"):
        preprocess_image(Image.new("L", (1, 4000)), config)
    with pytest.raises(ValueError, match="the image is empty"):
        preprocess_image(Image.new("L", (0, 0)), config)
