"""An int8 vision tower (`--quantize-vision int8`, ExecuTorch only): tiny-llava with random weights,
its vision transformer layers in 8da8w, exported to a .pte and held to the statistical parity
criteria; the .pte's vision encoder follows the int8 eager tower, not the float32 one."""

from __future__ import annotations

import numpy as np
import pytest

from export.config import ExportConfig
from export.manifest import read_manifest
from models import load_for_export
from models.quantize import Quantization, quantized_weights
from runtime.artifact import load_artifact
from runtime.backends import open_session
from runtime.eager import EagerModel
from runtime.generate import InputProcessor
from runtime.parity import load_reference
from runtime.samples import DEFAULT_PROMPT, sample_image
from tests.export.fixtures import export_and_check

STEPS = 4


@pytest.fixture(scope="module")
def int8_vision(tmp_path_factory):
    """(folder, parity report) of tiny-llava keep 64, float32 language model, int8 vision tower."""
    config = ExportConfig(
        model="tiny-llava",
        keep=64,
        random_weights=True,
        vision_quantization="int8",
        backends="executorch",
        output_dir=tmp_path_factory.mktemp("vision"),
    )
    return export_and_check(config, STEPS)


def test_the_manifest_and_folder_name_it(int8_vision):
    folder, _ = int8_vision
    assert folder.name == "keep64-vision-int8"
    model = read_manifest(folder)["model"]
    assert model["vision_quantization"] == "int8" and model["quantization"] == "none"
    assert load_artifact(folder).backends == ("executorch",)


def test_parity_is_statistical_and_passes(int8_vision):
    _, report = int8_vision
    (result,) = report.backends
    assert report.vision_quantization == "int8"
    assert not result.exact and result.passed and report.passed
    assert result.prefill_logits_max_abs <= result.tolerance


def test_the_pte_vision_encoder_is_the_int8_tower(int8_vision):
    """The .pte's image embeddings against the eager tower rebuilt from the manifest (int8) and
    against the float32 tower of the same weights: on average close to the first, as far from the
    second as eager int8 is. (On average: an activation that another summation order moves across
    an int8 rounding step shifts a few embeddings by a whole quantum, see `runtime.parity.STATISTICAL`.)"""
    folder, _ = int8_vision
    artifact = load_artifact(folder)
    pixel_values = InputProcessor.from_artifact(artifact)(sample_image(), DEFAULT_PROMPT).pixel_values
    reference = load_reference(artifact)
    assert any(name.startswith("model.vision_tower.") for name, _ in quantized_weights(reference.model))
    float32 = EagerModel.from_loaded(load_for_export("tiny-llava", quantization=Quantization.NONE, seed=0), keep=64)

    pte, _ = open_session(artifact, "executorch").vision_encoder(pixel_values)
    int8, _ = reference.session.vision_encoder(pixel_values)
    plain, _ = float32.session.vision_encoder(pixel_values)
    quantization_error = np.abs(int8 - plain).mean()
    assert quantization_error > 1e-4
    assert np.abs(pte - int8).mean() < quantization_error / 10
    assert np.abs(pte - plain).mean() > quantization_error / 2
