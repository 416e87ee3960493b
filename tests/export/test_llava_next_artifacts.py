"""tiny-llava-next exported end to end on both backends: two views of image tokens (8 x 8 base, 16 x 17
high-resolution with its newline column, N = 336) through the family seam, parity against eager
(which equals transformers, tests/models/test_llava_next.py), the manifest and the runtime CLI.

Keeps 37 (88.9 % pruning), 64 and 336 (unpruned), float32 on both backends; keep 37 in int4 on ONNX
Runtime.
"""

from __future__ import annotations

import onnx
import pytest
from PIL import Image

from export.manifest import read_manifest, verify_files
from models.tiny_llava import NEXT_RECIPE
from runtime.__main__ import main as runtime_main
from runtime.show import MIN_CELL, main as show_main
from runtime.samples import sample_image
from tests.export.fixtures import exporter
from tests.export.parity_checks import assert_exact_parity
from tests.quantization import MATMUL_NBITS_PER_LAYER

N = 336
NUM_LAYERS = 4
STEPS = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(keep, quantization) -> (artifact folder, parity report), exported on first use."""
    checkpoint = NEXT_RECIPE.build(tmp_path_factory.mktemp("checkpoints") / NEXT_RECIPE.name)
    return exporter(NEXT_RECIPE.name, checkpoint, tmp_path_factory.mktemp("llava-next-artifacts"), STEPS)


@pytest.mark.parametrize("keep", [37, 64, N])
def test_float32_parity_on_both_backends(exported, keep):
    assert_exact_parity(exported(keep)[1], ("onnx", "executorch"), STEPS)


def test_int4_parity(exported):
    folder, report = exported(37, "int4")
    (onnx_result,) = report.backends
    # Weight-only int4 (MatMulNBits), exact against eager on the same integer weights.
    assert onnx_result.exact and onnx_result.kept_indices_equal and onnx_result.tokens_equal
    assert report.passed
    prefill = onnx.load(str(folder / "onnx" / "prefill.onnx"), load_external_data=False)
    assert sum(node.op_type == "MatMulNBits" for node in prefill.graph.node) == NUM_LAYERS * MATMUL_NBITS_PER_LAYER + 1


def test_manifest_records_the_views(exported):
    folder, _ = exported(37)
    manifest = read_manifest(folder)
    assert verify_files(folder) == []
    assert manifest["model"]["family"] == "llava_next"
    assert manifest["geometry"] == {
        "num_image_tokens": N,
        "grid": [[8, 8], [16, 17]],
        "image_size": 224,
        "pixel_values_shape": [1, 5, 3, 112, 112],
        "position_rows": 1,
    }
    assert manifest["preprocess"]["resize"] == "stretch" and manifest["preprocess"]["image_size"] == 224
    assert manifest["vision"]["flops"] > 0


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_runtime_cli_answers(exported, backend, tmp_path, capfd):
    folder, _ = exported(37)
    path = tmp_path / "photo.png"
    sample_image().resize((500, 300)).save(path)
    code = runtime_main([str(folder), "--image", str(path), "--prompt", "What is shown?", "--backend", backend])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert out.strip() and f"[{backend}, keep 37, vlm-pruner, parity skipped" in err
    assert "the image (500 x 300) is stretched to 224 x 224" in err


def test_show_draws_both_views(exported, tmp_path):
    """runtime.show: the base view and the high-resolution view (newline tokens counted, not drawn)."""
    folder, _ = exported(37)
    image = tmp_path / "photo.png"
    sample_image().save(image)
    assert show_main([str(folder), "--image", str(image), "-o", str(tmp_path / "kept.png")]) == 0
    drawn = Image.open(tmp_path / "kept.png")
    # Side by side: the 8 x 8 base view and the 16 x 16 drawn cells of the 16 x 17 view, cells of MIN_CELL.
    assert drawn.height == 8 + 22 + 16 * MIN_CELL + 8 and drawn.width >= 3 * 8 + (8 + 16) * MIN_CELL
