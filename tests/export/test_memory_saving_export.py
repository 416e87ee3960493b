"""The memory-saving export path at work: weights materialized block by block and quantized,
ONNX graphs traced from a hollow model and given their weights afterwards in one shared file,
ExecuTorch lowering of the quantized model; parity of every artifact against eager.

Covered on tiny-llava (its checkpoint, int4, in this process) and on the real widths of
LLaVA-1.5-7B and Qwen2-VL-7B with 3 of their decoder layers (random weights, int4, both backends):
the same code path as `make export MODEL=llava-1.5-7b` or `MODEL=qwen2-vl-7b`, at a size CI can
run. The real-width exports run as `python -m export` in a child process, parity included, so that
their memory is given back when they end (in this process the allocator kept ~10 GB of it), and
are marked `real_width`: `make test` runs them after the rest, alone (tests/conftest.py). ONNX
Runtime's fast profile at real width: tests/export/test_real_width_fast_profile.py.

Float32 at real width is not exported here: the int4 ONNX graphs compute in float32 on dequantized
weights and are held to the same exact tolerance, and the float32 weight path is the tiny models'.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from export.config import ExportConfig
from export.manifest import read_manifest
from models import build_random_model, get_spec
from runtime.artifact import load_artifact
from runtime.backends.onnx_prepacked import CACHE_ENV, prepacked_graphs
from runtime.contract import ONNX_WEIGHTS_FILE
from runtime.parity import MIN_KEPT_OVERLAP
from tests.export.fixtures import export_and_check, export_in_child
from tests.quantization import MATMUL_NBITS_PER_LAYER, accuracy_levels, matmul_nbits
from tests.runtime.test_onnx_prepacked import assert_same_bits, generate_bits, prepacked_entries

STEPS = 4  # greedy tokens compared: enough to cover prefill, the cache hand-over and decoding
# Each family's real widths at reduced depth, random weights: (model, MatMulNBits of its decode graph).
REAL_WIDTH = {"llava-1.5-7b-3layers": 3 * MATMUL_NBITS_PER_LAYER + 1, "qwen2-vl-7b-3layers": 3 * MATMUL_NBITS_PER_LAYER + 1}


def _tiny_int4(tiny_dir, output_dir: Path, profile: str):
    config = ExportConfig(
        model="tiny-llava",
        keep=64,
        quantization="int4",
        model_path=tiny_dir,
        output_dir=output_dir,
        backends="onnx",
        onnx_profile=profile,
    )
    return export_and_check(config, STEPS)


@pytest.fixture(scope="module")
def tiny_int4(tiny_dir, tmp_path_factory):
    """tiny-llava int4 from its checkpoint, ONNX Runtime: the int4 ExecuTorch path (8da4w, its
    statistical criteria) is `real_width_int4`'s, at the widths where its quantization matters."""
    return _tiny_int4(tiny_dir, tmp_path_factory.mktemp("q"), "exact")


@pytest.fixture(scope="module")
def tiny_int4_fast(tiny_dir, tmp_path_factory):
    """The same in ONNX Runtime's fast profile (int8 activations)."""
    return _tiny_int4(tiny_dir, tmp_path_factory.mktemp("q"), "fast")


@pytest.fixture(scope="module", params=sorted(REAL_WIDTH))
def real_width_int4(request, tmp_path_factory):
    """(model, folder, manifest) of a 3-layer real-width model, int4 random weights, both backends,
    exported and parity-checked by `python -m export` in a child process."""
    options = ("--quantize", "int4", "--backends", "onnx,executorch")
    with export_in_child(tmp_path_factory, request.param, STEPS, *options) as output:
        folder = output / request.param / "keep64-int4"
        yield request.param, folder, read_manifest(folder)


def test_tiny_int4_artifact_is_quantized_and_shares_its_weights(tiny_int4):
    folder, _ = tiny_int4
    assert folder.name == "keep64-int4"
    manifest = read_manifest(folder)
    assert manifest["model"]["quantization"] == "int4" and manifest["model"]["source"] == "checkpoint"
    # 4 text layers' linears (q, k, v and gate, up joined) + lm_head, in both graphs that run the language model.
    for graph in ("prefill", "decode"):
        nodes = matmul_nbits(folder / "onnx" / f"{graph}.onnx")
        assert len(nodes) == 4 * MATMUL_NBITS_PER_LAYER + 1
        assert {(a.name, a.i) for a in nodes[0].attribute} >= {("bits", 4), ("block_size", 32)}
    assert not matmul_nbits(folder / "onnx" / "vision_encoder.onnx")
    data = [name for name in manifest["files"] if name.endswith(".data")]
    assert data == [f"onnx/{ONNX_WEIGHTS_FILE}"]


def test_tiny_int4_parity(tiny_int4):
    folder, report = tiny_int4
    (onnx_result,) = report.backends
    # ONNX Runtime: weight-only int4, exact against eager on the same integer weights.
    assert onnx_result.exact and onnx_result.kept_indices_equal and onnx_result.tokens_equal
    assert onnx_result.logits_max_abs <= onnx_result.tolerance
    assert report.passed
    assert accuracy_levels(folder) == {0} and read_manifest(folder)["model"]["onnx_profile"] == "exact"


@pytest.mark.parametrize("profile", ["tiny_int4", "tiny_int4_fast"], ids=["exact", "fast"])
def test_int4_prepacked_once_for_prefill_and_decode(profile, request, tmp_path, monkeypatch):
    """MatMulNBits' layouts (float32 compute, or int8 in the fast profile) saved by ONNX Runtime,
    one copy for both graphs, and the same logits bit for bit as the artifact's graphs packed by
    each session."""
    artifact = load_artifact(request.getfixturevalue(profile)[0])
    graphs = prepacked_graphs(artifact, tmp_path)
    prefill, decode = prepacked_entries(graphs["prefill"]), prepacked_entries(graphs["decode"])
    assert len(decode) == 4 * MATMUL_NBITS_PER_LAYER + 1 and all(key.startswith("MatMulNBits") for key in decode)
    assert decode.items() <= prefill.items()
    # The int8-compute layouts are read wrong from any offset but a multiple of 64 (ONNX Runtime
    # 1.31.1 saves them unaligned); this model's blobs are under a page, so nothing else aligns them.
    assert all(int(blob.split(";")[0]) % 64 == 0 for entry in prefill.values() for blob in entry.split("|")[1:])
    monkeypatch.setenv(CACHE_ENV, "")
    own = generate_bits(artifact)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert_same_bits(generate_bits(artifact), own)


def test_tiny_int4_fast_profile_parity(tiny_int4_fast):
    """int8 activations: held to the statistical criteria, which it meets."""
    folder, report = tiny_int4_fast
    assert folder.name == "keep64-int4-fast"
    assert accuracy_levels(folder) == {4} and read_manifest(folder)["model"]["onnx_profile"] == "fast"
    (onnx_result,) = report.backends
    assert not onnx_result.exact and onnx_result.kept_overlap >= MIN_KEPT_OVERLAP
    assert onnx_result.passed and report.passed


@pytest.mark.real_width
def test_real_width_int4_parity(real_width_int4):
    model, folder, manifest = real_width_int4
    assert manifest["model"]["family"] == get_spec(model).family
    assert manifest["model"]["source"] == "random" and manifest["model"]["quantization"] == "int4"
    parity = manifest["parity"]
    assert parity["status"] == "passed" and parity["report"]["passed"]
    onnx_result, executorch_result = (parity["report"]["backends"][b] for b in ("onnx", "executorch"))
    assert onnx_result["exact"] and onnx_result["kept_indices_equal"] and onnx_result["tokens_equal"]
    assert len(onnx_result["tokens"]) == parity["report"]["steps"] == STEPS
    assert onnx_result["logits_max_abs"] <= onnx_result["tolerance"]
    # ExecuTorch 8da4w: statistical criteria (activations quantized on the fly).
    assert not executorch_result["exact"] and executorch_result["kept_overlap"] >= MIN_KEPT_OVERLAP
    assert executorch_result["passed"]
    assert len(matmul_nbits(folder / "onnx" / "decode.onnx")) == REAL_WIDTH[model]


@pytest.mark.real_width
def test_int4_weights_are_a_fraction_of_float32(real_width_int4):
    model, folder, _ = real_width_int4
    float32_bytes = 4 * sum(p.numel() for p in build_random_model(model).parameters())  # meta: shapes only
    # The text linears shrink ~7x (4-bit codes + a bfloat16 or float32 scale per 32); the
    # embeddings and the vision tower stay float32.
    assert read_manifest(folder)["files"][f"onnx/{ONNX_WEIGHTS_FILE}"]["bytes"] < 0.45 * float32_bytes


@pytest.mark.real_width
def test_peak_memory_of_each_stage_is_in_the_manifest(real_width_int4):
    _, _, manifest = real_width_int4
    peaks = manifest["peak_rss_mib"]
    assert {"load", "torch_export.prefill", "onnx.prefill", "executorch.lower", "check", "hash"} <= set(peaks)
    # A running maximum per process: a .pte the estimate calls large (here Qwen2-VL-7B's widths) is
    # lowered in a process of its own (export.pipeline), whose stages are the executorch.* ones.
    if "executorch.load" in peaks:
        groups = [[peak for stage, peak in peaks.items() if stage.startswith("executorch.") == child] for child in (True, False)]
    else:
        groups = [list(peaks.values())]
    assert all(values == sorted(values) for values in groups)
