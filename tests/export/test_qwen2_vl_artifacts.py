"""tiny-qwen2-vl exported end to end on both backends: the manifest and graphs of the family seam,
parity against eager (which equals transformers, tests/models/test_qwen2_vl.py), the runtime CLI,
and the errors of inputs that belong to another family.

Keeps 28 (of N = 64, 56 % pruning) and 64 (unpruned), float32 on both backends; keep 28 in int4
on ONNX Runtime (int4 on ExecuTorch: tests/export/test_memory_saving_export.py, at Qwen2-VL-7B's widths).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.manifest import read_manifest, verify_files
from models import build_tiny_qwen2_vl
from runtime.__main__ import main as runtime_main
from runtime.artifact import load_artifact
from runtime.eager import EagerModel
from runtime.contract import GRAPH_NAMES, graph_io
from runtime.generate import GenerationConfig, InputProcessor, Runner
from runtime.samples import DEFAULT_PROMPT, sample_image
from tests.export.fixtures import exporter
from tests.export.parity_checks import assert_exact_parity
from tests.quantization import MATMUL_NBITS_PER_LAYER

MODEL = "tiny-qwen2-vl"
N = 64
NUM_LAYERS = 4
STEPS = 16


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("checkpoints") / MODEL)


@pytest.fixture(scope="module")
def exported(qwen_dir, tmp_path_factory):
    """(keep, quantization) -> (artifact folder, parity report), exported on first use."""
    return exporter(MODEL, qwen_dir, tmp_path_factory.mktemp("qwen-artifacts"), STEPS)


@pytest.mark.parametrize("keep", [28, N])
def test_float32_parity_on_both_backends(exported, keep):
    assert_exact_parity(exported(keep)[1], ("onnx", "executorch"), STEPS)


def test_int4_parity(exported):
    folder, report = exported(28, "int4")
    (onnx_result,) = report.backends
    # Weight-only int4 (MatMulNBits), exact against eager on the same integer weights.
    assert onnx_result.exact and onnx_result.kept_indices_equal and onnx_result.tokens_equal
    assert onnx_result.logits_max_abs <= onnx_result.tolerance
    assert report.passed
    prefill = onnx.load(str(folder / "onnx" / "prefill.onnx"), load_external_data=False)
    assert sum(node.op_type == "MatMulNBits" for node in prefill.graph.node) == NUM_LAYERS * MATMUL_NBITS_PER_LAYER + 1


def test_manifest_records_the_family_and_its_geometry(exported):
    folder, _ = exported(28)
    manifest = read_manifest(folder)
    assert verify_files(folder) == []
    assert manifest["model"]["family"] == "qwen2_vl"
    assert manifest["geometry"] == {
        "num_image_tokens": N,
        "grid": [8, 8],
        "image_size": 224,
        "pixel_values_shape": [256, 3 * 2 * 14 * 14],
        "position_rows": 3,
    }
    assert manifest["preprocess"]["resize"] == "stretch" and manifest["preprocess"]["image_size"] == 224
    assert manifest["prompt_template"].count("<|image_pad|>") == 1
    assert manifest["text"]["eos_token_id"] == [2, 0]  # <|im_end|>, <|endoftext|>
    assert manifest["vision"]["flops"] > 0


def test_onnx_graphs_take_three_rows_of_positions(exported):
    folder, _ = exported(28)
    for name in GRAPH_NAMES:
        model = onnx.load(str(folder / "onnx" / f"{name}.onnx"), load_external_data=False)
        inputs, outputs = graph_io(name, NUM_LAYERS)
        assert tuple(value.name for value in model.graph.input) == inputs
        assert tuple(value.name for value in model.graph.output) == outputs
    prefill = onnx.load(str(folder / "onnx" / "prefill.onnx"), load_external_data=False)
    dims = {
        value.name: [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        for value in prefill.graph.input
    }
    assert dims["position_ids"] == [3, 1, "sequence_length"] and dims["image_positions"] == [N]


def test_decode_continues_after_the_rope_delta(exported):
    """The host's positions: the prompt's M-RoPE rows, then T + s + delta for the s-th decode step."""
    folder, _ = exported(28)
    inputs = InputProcessor.from_artifact(load_artifact(folder))(sample_image(), DEFAULT_PROMPT)
    positions = inputs.positions()
    assert positions.prompt.shape == (3, 1, inputs.num_tokens)
    start = int(inputs.image_positions[0])
    assert positions.rope_delta == 8 - N  # the image spans max(H, W) = 8 positions for its 64 tokens
    assert int(positions.prompt.max()) + 1 == inputs.num_tokens + positions.rope_delta
    np.testing.assert_array_equal(positions.decode(0), np.full((3, 1, 1), inputs.num_tokens + positions.rope_delta))
    np.testing.assert_array_equal(positions.prompt[:, 0, start + 9], [start, start + 1, start + 1])


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_runtime_cli_answers(exported, backend, tmp_path, capfd):
    """The answer on stdout; the note about the stretched image and the stats line on stderr (the
    CLI filters stderr below the Python level: captured at the file descriptor)."""
    folder, _ = exported(28)
    path = tmp_path / "photo.png"
    sample_image().resize((500, 300)).save(path)
    code = runtime_main([str(folder), "--image", str(path), "--prompt", "What is shown?", "--backend", backend])
    out, err = capfd.readouterr()
    assert code == 0, err
    # The fixture's export checks parity itself (`check_parity`), so the manifest says skipped.
    assert out.strip() and f"[{backend}, keep 28, vlm-pruner, parity skipped" in err
    assert "the image (500 x 300) is stretched to 224 x 224" in err


def test_inputs_of_another_family_are_refused(exported, tiny):
    """LLaVA given Qwen2-VL's inputs, and the other way round: one-line errors, not a crash. (The
    LLaVA side is the eager model's input preparation, the one every LLaVA runner uses, so that
    this module needs no tiny-llava artifact: tests/conftest.py.)"""
    qwen = Runner(exported(28)[0], "onnx")
    llava = EagerModel.from_loaded(tiny)
    qwen_inputs = qwen.inputs(sample_image(), DEFAULT_PROMPT)
    llava_ids, llava_pixels = llava.prepare_inputs(sample_image(), DEFAULT_PROMPT)
    with pytest.raises(ValueError, match=r"expected one image \(576 image tokens"):
        llava.generate_ids(qwen_inputs.input_ids, qwen_inputs.pixel_values, GenerationConfig())
    with pytest.raises(ValueError, match=r"pixel_values must be \[1, 3, 336, 336\] for this model, got \[256, 1176\]"):
        llava.generate_ids(llava_ids, qwen_inputs.pixel_values, GenerationConfig())
    with pytest.raises(ValueError, match=r"pixel_values must be \[256, 1176\] for this model, got \[1, 3, 336, 336\]"):
        qwen.generate_ids(qwen_inputs.input_ids, llava_pixels)
