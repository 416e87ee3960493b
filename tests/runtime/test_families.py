"""The host side of each family (runtime/families): preprocessing against transformers, position ids,
the manifest sections it reads, and no torch on the ONNX Runtime path."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from models import get_spec
from runtime.artifact import ArtifactError
from runtime.families import host_family
from runtime.families.qwen2_vl import patchify
from runtime.preprocess import rescale_and_normalize
from tests.export.fixtures import REPO


def sections(name: str) -> dict:
    spec = get_spec(name)
    family = spec.model_family
    return family.input_sections(spec, family.synthetic_processor(spec))


def random_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(width * height).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize(("size", "mode"), [((224, 224), "RGB"), ((500, 300), "RGB"), ((90, 160), "RGBA")])
def test_qwen2_vl_patches_equal_transformers(size, mode):
    """Bit-exact with transformers' Qwen2-VL image processor on the image fitted to S x S."""
    spec = get_spec("tiny-qwen2-vl")
    processor = spec.model_family.synthetic_processor(spec)
    host = host_family(sections("tiny-qwen2-vl"))
    image = random_image(*size, mode)
    expected = processor.image_processor(images=host.fit_image(image), return_tensors="np")
    assert expected["image_grid_thw"].tolist() == [[1, 16, 16]]
    got = host.preprocess(image)
    assert got.dtype == np.float32 and got.shape == (256, 1176)
    np.testing.assert_array_equal(got, expected["pixel_values"])


def test_qwen2_vl_stretch_is_noted():
    host = host_family(sections("tiny-qwen2-vl"))
    notes = []
    host.preprocess(random_image(500, 300), on_note=notes.append)
    host.preprocess(random_image(224, 224), on_note=notes.append)
    host.preprocess(random_image(100, 100), on_note=notes.append)  # square: resized, not distorted
    assert notes == [
        "the image (500 x 300) is stretched to 224 x 224, the one size this artifact was exported for "
        "(export another size with --image-size)"
    ]


@pytest.mark.parametrize("name", ["tiny-llava-next", "llava-next-7b"])
@pytest.mark.parametrize(("size", "mode"), [((224, 224), "RGB"), ((500, 300), "RGB"), ((90, 160), "RGBA")])
def test_llava_next_tiles_equal_transformers(name, size, mode):
    """Bit-exact with transformers' PIL LLaVA-NeXT image processor on the image fitted to S x S: the
    base tile, then the S x S image's tiles row-major; the processor's own tiling is S x S."""
    spec = get_spec(name)
    processor = spec.model_family.synthetic_processor(spec)
    host = host_family(sections(name))
    image = random_image(*size, mode)
    expected = processor.image_processor(images=host.fit_image(image), return_tensors="np")
    side, tile = spec.image_size, spec.vision.tile
    assert expected["image_sizes"].tolist() == [[side, side]]
    got = host.preprocess(image)
    assert got.dtype == np.float32 and got.shape == (1, 1 + (side // tile) ** 2, 3, tile, tile)
    np.testing.assert_array_equal(got, expected["pixel_values"])


def test_llava_next_prompt_holds_n_image_tokens():
    """The processor's count of image tokens for the fitted image is the spec's N: nothing unpadded."""
    for name, n in (("tiny-llava-next", 336), ("llava-next-7b", 2928)):
        spec = get_spec(name)
        processor = spec.model_family.synthetic_processor(spec)
        fitted = host_family(sections(name)).fit_image(random_image(500, 300))
        ids = processor(images=fitted, text=spec.format_prompt("Why?"), return_tensors="np")["input_ids"]
        assert int((ids == spec.image_token_id).sum()) == n == spec.num_image_tokens


def test_llava_next_stretch_is_noted():
    host = host_family(sections("tiny-llava-next"))
    notes = []
    host.preprocess(random_image(500, 300), on_note=notes.append)
    host.preprocess(random_image(224, 224), on_note=notes.append)
    assert notes == ["the image (500 x 300) is stretched to 224 x 224, the one size this artifact was exported for"]


def test_llava_next_manifest_with_a_broken_tiling():
    manifest = sections("tiny-llava-next")
    manifest["preprocess"]["image_size"] = 200
    with pytest.raises(ValueError, match=r"image_size 200 is not a whole number of square tiles \(112, 112\)"):
        host_family(manifest)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-next", "tiny-qwen2-vl"])
def test_model_view_is_the_picture_the_pixel_values_hold(name):
    """`model_view` (what runtime.show draws the grid on) is the image preprocessing normalises."""
    host = host_family(sections(name))
    image = random_image(500, 300)
    view = host.model_view(image)
    assert view.mode == "RGB"
    if name == "tiny-llava":
        config = host.config
        pixels = np.asarray(view).transpose(2, 0, 1)
        assert view.size == (config.crop_size[1], config.crop_size[0])
        expected = rescale_and_normalize(pixels, config.rescale_factor, config.image_mean, config.image_std)[None]
        np.testing.assert_array_equal(host.preprocess(image), expected)
    elif name == "tiny-llava-next":
        config = host.config
        pixels = np.asarray(view).transpose(2, 0, 1)
        assert view.size == (host.image_size,) * 2
        tiles = rescale_and_normalize(pixels, config.rescale_factor, config.image_mean, config.image_std)
        np.testing.assert_array_equal(host.preprocess(image)[0, 2], tiles[:, :112, 112:])  # the top right tile
    else:
        assert view.size == (host.config.image_size,) * 2
        np.testing.assert_array_equal(np.asarray(view), np.asarray(host.fit_image(image)))


def test_patchify_order():
    """Patches in 2 x 2 merge blocks, row-major; features (channel, frame, row, column)."""
    image = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    patches = patchify(image, patch_size=1, merge_size=2, temporal_patch_size=2)
    assert patches.shape == (16, 3 * 2)
    # Block (0, 0) holds pixels (0, 0), (0, 1), (1, 0), (1, 1); then block (0, 1) starts at (0, 2).
    assert [int(p[0]) for p in patches[:5]] == [0, 1, 4, 5, 2]
    np.testing.assert_array_equal(patches[1], [1, 1, 17, 17, 33, 33])


def test_position_ids_per_family():
    llava, qwen = host_family(sections("tiny-llava")), host_family(sections("tiny-qwen2-vl"))
    positions, delta = llava.position_ids(600, np.arange(5, 581), np.arange(576))
    assert positions.shape == (1, 1, 600) and delta == 0
    np.testing.assert_array_equal(positions[0, 0], np.arange(600))
    positions, delta = qwen.position_ids(80, np.arange(10, 74), np.arange(64))
    assert positions.shape == (3, 1, 80) and delta == 8 - 64
    with pytest.raises(ValueError, match="one contiguous block"):
        qwen.position_ids(80, np.r_[np.arange(10, 41), np.arange(42, 75)], np.arange(64))


def test_position_ids_of_the_tokens_a_vision_graph_kept():
    """DivPrune's prompt holds R of the image's tokens: LLaVA counts them like text (contiguous);
    Qwen2-VL gives each the (s, s + row, s + column) of its grid cell, and the text after the image
    continues from s + max(H, W) as for the whole image."""
    llava, qwen = host_family(sections("tiny-llava")), host_family(sections("tiny-qwen2-vl"))
    positions, delta = llava.position_ids(100, np.arange(5, 69), np.arange(0, 576, 9))
    np.testing.assert_array_equal(positions[0, 0], np.arange(100))
    assert delta == 0
    kept = np.array([0, 9, 27, 63])  # cells (0, 0), (1, 1), (3, 3), (7, 7) of the 8 x 8 grid
    positions, delta = qwen.position_ids(20, np.arange(10, 14), kept)
    rows = positions[:, 0]
    np.testing.assert_array_equal(rows[:, :10], np.broadcast_to(np.arange(10), (3, 10)))
    np.testing.assert_array_equal(rows[:, 10:14], [[10, 10, 10, 10], [10, 11, 13, 17], [10, 11, 13, 17]])
    np.testing.assert_array_equal(rows[:, 14:], np.broadcast_to(np.arange(18, 24), (3, 6)))
    assert delta == 24 - 20  # decode continues from the largest position + 1, whatever was dropped
    for bad in (np.array([3, 2, 9, 10]), np.array([0, 1, 2]), np.array([0, 1, 2, 64])):
        with pytest.raises(ValueError, match="image tokens must be 4 ascending indices in \\[0, 64\\)"):
            qwen.position_ids(20, np.arange(10, 14), bad)


def test_unknown_family_in_a_manifest():
    manifest = sections("tiny-llava") | {"model": {"family": "blip"}}
    with pytest.raises(ArtifactError, match="unknown model family 'blip' in the manifest"):
        host_family(manifest)


def test_onnx_runtime_path_imports_no_torch():
    """The runtime, its families and the ONNX Runtime backend import numpy, PIL, tokenizers and
    onnxruntime only: a device with ONNX Runtime alone runs the artifacts."""
    modules = "runtime.generate, runtime.families, runtime.backends.onnx, runtime.__main__, runtime.show"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {modules}"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = re.findall(r"\|\s+(\S+)$", result.stderr, re.MULTILINE)
    assert "runtime.families.qwen2_vl" in imported
    assert not [name for name in imported if name.split(".")[0] in ("torch", "transformers", "executorch")]
