"""ONNX Runtime's fast profile (int8 activations) at LLaVA-1.5-7B's widths with 3 decoder layers:
int4 random weights exported and parity-checked by `python -m export` in a child process, as in
tests/export/test_memory_saving_export.py. A module of its own so that its artifact and that
module's never lie on disk together: a module-scoped fixture is removed when its module ends.
"""

from __future__ import annotations

import pytest

from export.manifest import read_manifest
from runtime.artifact import load_artifact
from runtime.backends.onnx_prepacked import CACHE_ENV, DATA_FILE, PREPACKED_DIR
from runtime.parity import MIN_KEPT_OVERLAP
from tests.export.fixtures import export_in_child
from tests.export.test_memory_saving_export import STEPS
from tests.quantization import accuracy_levels
from tests.runtime.test_onnx_prepacked import assert_same_bits, generate_bits

MODEL = "llava-1.5-7b-3layers"


@pytest.fixture(scope="module")
def real_width_fast(tmp_path_factory):
    """The artifact's folder."""
    options = ("--quantize", "int4", "--onnx-profile", "fast", "--backends", "onnx")
    with export_in_child(tmp_path_factory, MODEL, STEPS, *options) as output:
        yield output / MODEL / "keep64-int4-fast"


@pytest.mark.real_width
def test_real_width_fast_profile_parity(real_width_fast):
    """int8 activations at the real widths, where their rounding matters: the statistical criteria hold."""
    parity = read_manifest(real_width_fast)["parity"]
    assert parity["status"] == "passed" and parity["report"]["passed"]
    onnx_result = parity["report"]["backends"]["onnx"]
    assert not onnx_result["exact"] and onnx_result["kept_overlap"] >= MIN_KEPT_OVERLAP and onnx_result["passed"]
    assert accuracy_levels(real_width_fast) == {4}


@pytest.mark.real_width
def test_real_width_fast_profile_prepacked_once(real_width_fast, tmp_path, monkeypatch):
    """The int8-compute layouts at the real widths, one copy for prefill and decode: the same logits
    bit for bit as each session packing its own."""
    artifact = load_artifact(real_width_fast)
    monkeypatch.setenv(CACHE_ENV, "")
    own = generate_bits(artifact)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert_same_bits(generate_bits(artifact), own)
    (folder,) = (tmp_path / PREPACKED_DIR).iterdir()
    assert (folder / DATA_FILE).is_file()
