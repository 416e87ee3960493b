"""The runtime's PIL + numpy preprocessing against transformers' processor of tiny-llava.

Loading images, their modes and bounds: test_images.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from runtime.families.llava import PreprocessConfig, preprocess_image


def _image(shape: tuple[int, ...], mode: str, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8), mode=mode)


IMAGES = {
    "landscape-rgb": _image((300, 400, 3), "RGB", 0),
    "portrait-rgba": _image((400, 300, 4), "RGBA", 1),
    "small-gray": _image((100, 50), "L", 2),  # upscaled
    "square-336": _image((336, 336, 3), "RGB", 3),  # no resize, no crop
    "wide-rgb": _image((200, 1000, 3), "RGB", 4),
}


@pytest.fixture(scope="module")
def config(runtime_artifact) -> PreprocessConfig:
    return PreprocessConfig.from_manifest(runtime_artifact.manifest["preprocess"])


@pytest.mark.parametrize("name", IMAGES)
def test_pixel_values_equal_the_processor(name, config, hf_processor):
    image = IMAGES[name]
    expected = hf_processor.image_processor(images=image, return_tensors="np")["pixel_values"]
    ours = preprocess_image(image, config)
    assert ours.dtype == np.float32 and ours.shape == (1, 3, 336, 336)
    # The same operations in the same order and dtypes: identical, not merely close.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    assert np.array_equal(ours, expected)


def test_sizes_as_ints_or_dicts():
    section = {"resample": "bicubic", "rescale_factor": 1 / 255, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    as_ints = PreprocessConfig.from_manifest({**section, "size": 336, "crop_size": 336})
    as_dicts = PreprocessConfig.from_manifest(
        {**section, "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
    )
    assert as_ints == as_dicts


def test_unknown_resample_is_rejected():
    with pytest.raises(ValueError, match="resample"):
        PreprocessConfig(
            size=336, crop_size=(336, 336), resample="area", rescale_factor=1.0, image_mean=(0,) * 3, image_std=(1,) * 3
        )
