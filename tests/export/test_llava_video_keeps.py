"""tiny-llava-video (8 frames of 4 x 4 pooled tokens and the newline token, N = 129) exported at keeps
64 and 129 (unpruned) on both backends, keep 14 in int4 on ONNX Runtime, and keep 14 at 4 frames
(`--frames`): parity against eager (which equals transformers, tests/models/test_llava_video.py).
Keep 14 on both backends, the manifest, the CLI and the bad inputs: test_llava_video_artifacts.py.
"""

from __future__ import annotations

import pytest

from export.config import ExportConfig
from export.manifest import read_manifest
from models.tiny_llava import VIDEO_RECIPE
from tests.export.fixtures import export_and_check, exporter
from tests.export.parity_checks import assert_exact_parity

N = 129
STEPS = 16


@pytest.fixture(scope="module")
def exported(tiny_video_dir, tmp_path_factory):
    """(keep, quantization) -> (artifact folder, parity report), exported on first use."""
    return exporter(VIDEO_RECIPE.name, tiny_video_dir, tmp_path_factory.mktemp("llava-video-keeps"), STEPS)


@pytest.mark.parametrize("keep", [64, N])
def test_float32_parity_on_both_backends(exported, keep):
    assert_exact_parity(exported(keep)[1], ("onnx", "executorch"), STEPS)


def test_int4_parity(exported):
    _, report = exported(14, "int4")
    (onnx_result,) = report.backends
    # Weight-only int4 (MatMulNBits), exact against eager on the same integer weights.
    assert onnx_result.exact and onnx_result.kept_indices_equal and onnx_result.tokens_equal
    assert report.passed


def test_another_number_of_frames(tiny_video_dir, tmp_path):
    """--frames 4: N = 4 x 16 + 1 = 65, the folder says so, parity exact on ONNX Runtime."""
    config = ExportConfig(
        model=VIDEO_RECIPE.name, keep=14, frames=4, model_path=tiny_video_dir, output_dir=tmp_path, backends=("onnx",)
    )
    folder, report = export_and_check(config, STEPS)
    assert folder.name == "keep14-4f"
    geometry = read_manifest(folder)["geometry"]
    assert geometry["frames"] == 4 and geometry["num_image_tokens"] == 65
    assert geometry["pixel_values_shape"] == [1, 4, 3, 112, 112]
    assert_exact_parity(report, ("onnx",), STEPS)
    with pytest.raises(ValueError, match="answers about images"):
        ExportConfig(model="tiny-llava", frames=4)
