"""ExportPipeline stages: order is enforced, failures leave nothing behind."""

from __future__ import annotations

import pytest

from export import memory
from export.config import ExportConfig
from export.pipeline import ExportPipeline


@pytest.mark.parametrize(
    ("stage", "needs"),
    [
        ("load", "prepare"),
        ("wrap", "load"),
        ("trace", "wrap"),
        ("to_onnx", "trace"),
        ("to_executorch", "load"),
        ("check", "to_onnx or to_executorch"),
        ("save_processor", "load"),
        ("finalize", "to_onnx or to_executorch"),
    ],
)
def test_stages_refuse_to_run_out_of_order(tmp_path, stage, needs):
    pipeline = ExportPipeline(ExportConfig(output_dir=tmp_path))
    with pytest.raises(RuntimeError, match=f"run the {needs} stage first"):
        getattr(pipeline, stage)()


def test_failed_run_removes_its_staging_folder(tmp_path):
    config = ExportConfig(
        model="llava-1.5-7b", backends=("onnx",), model_path=tmp_path / "no-weights", output_dir=tmp_path / "out"
    )
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        ExportPipeline(config).run()
    assert list((tmp_path / "out" / "llava-1.5-7b").iterdir()) == []


def test_backend_that_would_not_fit_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 16 * memory.GIB)
    config = ExportConfig(model="llava-1.5-7b", random_weights=True, output_dir=tmp_path)
    with pytest.raises(MemoryError, match=r"than this machine has \(16 GiB\): executorch about 27 GiB"):
        ExportPipeline(config).prepare()
    assert list((tmp_path / "llava-1.5-7b").iterdir()) == []


def test_model_without_checkpoint_needs_random_weights(tmp_path):
    config = ExportConfig(model="llava-1.5-7b-3layers", output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="random weights only"):
        ExportPipeline(config).run()
    assert list((tmp_path / "llava-1.5-7b-3layers").iterdir()) == []


def test_artifact_folder_is_named_after_model_keep_and_quantization(tmp_path):
    assert ExportPipeline(ExportConfig(rate=0.667, output_dir=tmp_path)).artifact_dir == tmp_path / "tiny-llava/keep192"
    config = ExportConfig(keep=64, quantization="int4", output_dir=tmp_path)
    assert ExportPipeline(config).artifact_dir == tmp_path / "tiny-llava/keep64-int4"
