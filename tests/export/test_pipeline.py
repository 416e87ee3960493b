"""ExportPipeline stages: order is enforced, failures and interrupts leave nothing behind, parity status."""

from __future__ import annotations

import logging
import re
import time

import pytest

import runtime.cli
from export import memory, pipeline
from export.config import ExportConfig
from export.manifest import read_manifest, write_manifest
from export.pipeline import ExportPipeline
from export.staging import DestinationBusy


@pytest.mark.parametrize(
    ("stage", "needs"),
    [
        ("load", "prepare"),
        ("wrap", "load"),
        ("trace", "wrap"),
        ("to_onnx", "trace"),
        ("to_executorch", "prepare"),  # then, for a model lowered in this process, load
        ("check", "to_onnx or to_executorch"),
        ("save_processor", "load"),
        ("finalize", "to_onnx or to_executorch"),
    ],
)
def test_stages_refuse_to_run_out_of_order(tmp_path, stage, needs):
    pipeline = ExportPipeline(ExportConfig(output_dir=tmp_path))
    with pytest.raises(RuntimeError, match=f"run the {needs} stage first"):
        getattr(pipeline, stage)()


def test_parity_stage_needs_an_artifact_in_place(tmp_path):
    with pytest.raises(RuntimeError, match="run the finalize stage first"):
        ExportPipeline(ExportConfig(output_dir=tmp_path)).check_parity(lambda pipeline: {"passed": True})


def test_parity_stays_pending_when_the_check_is_interrupted(tmp_path):
    export = ExportPipeline(ExportConfig(output_dir=tmp_path))
    export.artifact_dir.mkdir(parents=True)
    write_manifest(export.artifact_dir, {"export_seconds": {}, "peak_rss_mib": {}, "parity": {"status": "pending"}})

    def interrupted(pipeline):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export.check_parity(interrupted)
    assert read_manifest(export.artifact_dir)["parity"] == {"status": "pending"}
    export.check_parity(lambda pipeline: {"passed": False})
    assert read_manifest(export.artifact_dir)["parity"] == {"status": "failed", "report": {"passed": False}}


def test_interrupt_swallowed_by_a_library_stops_the_run_at_the_next_stage(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.cli, "_interrupted", True)  # as the signal handler of runtime.cli leaves it
    config = ExportConfig(backends=("onnx",), model_path=tiny_dir, output_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ExportPipeline(config).run()
    assert list((tmp_path / "tiny-llava").iterdir()) == []


def test_second_export_of_the_same_destination_fails_at_once(tmp_path):
    config = ExportConfig(backends=("onnx",), output_dir=tmp_path)
    first = ExportPipeline(config).prepare()
    with pytest.raises(DestinationBusy, match=rf"another export to {first.artifact_dir} is running \(process \d+\)"):
        ExportPipeline(config).prepare()
    first.close()
    assert list((tmp_path / "tiny-llava").iterdir()) == []
    ExportPipeline(config).prepare().close()


@pytest.fixture
def pipeline_log(caplog) -> list[str]:
    """The messages the pipeline logs (not through caplog: runtime.cli stops the project's loggers propagating)."""
    caplog.set_level(logging.INFO, logger=pipeline.logger.name)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    pipeline.logger.addHandler(handler)
    yield messages
    pipeline.logger.removeHandler(handler)


def test_heartbeat_of_a_long_stage(pipeline_log):
    with pipeline._heartbeat("executorch.lower", start=time.perf_counter(), every=0.02):
        time.sleep(0.1)
    assert pipeline_log and all(message.startswith("executorch.lower still running (") for message in pipeline_log)


def test_reexport_of_fewer_backends_says_what_the_artifact_loses(tmp_path, pipeline_log):
    export = ExportPipeline(ExportConfig(backends=("onnx",), output_dir=tmp_path))
    for folder in ("onnx", "executorch"):
        (export.artifact_dir / folder).mkdir(parents=True)
    export.prepare().close()
    assert (
        f"the new artifact replaces {export.artifact_dir} and will no longer hold executorch "
        "(to keep it, export with --backends onnx,executorch)"
    ) in pipeline_log


def test_failed_run_removes_its_staging_folder(tmp_path):
    config = ExportConfig(
        model="llava-1.5-7b", backends=("onnx",), model_path=tmp_path / "no-weights", output_dir=tmp_path / "out"
    )
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        ExportPipeline(config).run()
    assert list((tmp_path / "out" / "llava-1.5-7b").iterdir()) == []


def test_backend_that_would_not_fit_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 14 * memory.GIB)
    config = ExportConfig(model="llava-1.5-7b", random_weights=True, output_dir=tmp_path)
    with pytest.raises(MemoryError, match=r"than this machine has \(14 GiB\): executorch about 14 GiB"):
        ExportPipeline(config).prepare()
    assert not (tmp_path / "llava-1.5-7b").exists()


def test_model_without_checkpoint_needs_random_weights(tmp_path):
    config = ExportConfig(model="llava-1.5-7b-3layers", output_dir=tmp_path)
    hint = "random weights only; export it with `make export MODEL=llava-1.5-7b-3layers RANDOM_WEIGHTS=1`"
    with pytest.raises(FileNotFoundError, match=re.escape(hint)):
        ExportPipeline(config).run()
    assert list((tmp_path / "llava-1.5-7b-3layers").iterdir()) == []


def test_artifact_folder_is_named_after_model_keep_and_quantization(tmp_path):
    assert ExportPipeline(ExportConfig(rate=0.667, output_dir=tmp_path)).artifact_dir == tmp_path / "tiny-llava/keep192"
    config = ExportConfig(keep=64, quantization="int4", output_dir=tmp_path)
    assert ExportPipeline(config).artifact_dir == tmp_path / "tiny-llava/keep64-int4"
