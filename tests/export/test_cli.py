"""`python -m export`: flag parsing with the pipeline patched out, user errors, one real ONNX run."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import export.__main__ as cli
from export import memory
from export.config import Backend, ExportConfig
from export.manifest import read_manifest, verify_files
from models.quantize import Quantization


class FakePipeline:
    """Records the config and writes a bare manifest instead of exporting."""

    configs: list[ExportConfig] = []

    def __init__(self, config: ExportConfig):
        self.config = config
        FakePipeline.configs.append(config)

    def run(self) -> Path:
        folder = self.config.artifact_dir
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"export_seconds": {"load": 1.0}, "peak_rss_mib": {"load": 100.0}, "parity": None}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """main() with the pipeline and the parity check patched out; returns the recorded configs."""
    FakePipeline.configs = []
    monkeypatch.setattr(cli, "ExportPipeline", FakePipeline)
    monkeypatch.setattr(cli, "run_parity", lambda pipeline, folder: {"passed": True, "backends": {}})
    monkeypatch.chdir(tmp_path)
    return FakePipeline.configs


def test_defaults(fake):
    assert cli.main([]) == 0
    (config,) = fake
    assert config.model == "tiny-llava" and config.keep_count == 64
    assert config.backends == (Backend.ONNX, Backend.EXECUTORCH)
    assert config.output_dir == Path("artifacts") and config.model_path is None and config.max_seq_len is None
    assert config.quantization is Quantization.NONE and not config.random_weights and config.seed == 0


def test_all_flags(fake, tmp_path):
    argv = ["-m", "tiny-llava", "--keep", "192", "--backends", "executorch", "--model-path", "ckpt", "-o", "out"]
    assert cli.main([*argv, "--max-seq-len", "1024", "--skip-parity"]) == 0
    (config,) = fake
    assert config.keep_count == 192 and config.backends == (Backend.EXECUTORCH,)
    assert config.model_path == Path("ckpt") and config.output_dir == Path("out") and config.max_seq_len == 1024
    assert read_manifest(tmp_path / "out/tiny-llava/keep192")["parity"] is None


def test_random_weights_and_quantization(fake, tmp_path):
    assert cli.main(["-m", "llava-1.5-7b", "--random-weights", "--seed", "3", "--quantize", "int8"]) == 0
    (config,) = fake
    assert config.random_weights and config.seed == 3 and config.quantization is Quantization.INT8
    assert config.artifact_dir == Path("artifacts/llava-1.5-7b/keep64-int8")


def test_rate(fake):
    assert cli.main(["--rate", "0.667"]) == 0
    assert fake[0].keep_count == 192 and fake[0].rate == 0.667


@pytest.mark.parametrize(
    ("argv", "backends"),
    [
        (["--backends", "onnx,executorch"], ("onnx", "executorch")),
        (["--backends", "executorch,onnx"], ("executorch", "onnx")),
        (["--backends", "onnx", "--backends", "executorch"], ("onnx", "executorch")),
        (["--backends", "onnx", "--backends", "onnx"], ("onnx",)),
    ],
)
def test_backends_comma_separated_or_repeated(fake, argv, backends):
    assert cli.main(argv) == 0
    assert tuple(backend.value for backend in fake[0].backends) == backends


def test_parity_results_are_stored_in_the_manifest(fake, tmp_path):
    assert cli.main([]) == 0
    manifest = read_manifest(tmp_path / "artifacts/tiny-llava/keep64")
    assert manifest["parity"] == {"passed": True, "backends": {}}
    assert set(manifest["export_seconds"]) == {"load", "parity"}
    assert set(manifest["peak_rss_mib"]) == {"load", "parity"} and manifest["peak_rss_mib"]["parity"] > 0


def test_failed_parity_exits_1(fake, monkeypatch):
    monkeypatch.setattr(cli, "run_parity", lambda pipeline, folder: {"passed": False, "backends": {}})
    assert cli.main([]) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "64", "--rate", "0.5"], "argument --rate: not allowed with argument --keep"),
        (["-m", "llava-9b"], "argument -m/--model: invalid choice: 'llava-9b'"),
        (["--backends", "onnx,tflite"], "argument --backends: invalid choice 'tflite' (choose from onnx, executorch)"),
        (["--keep", "0"], "keep must be an integer in [1, N] = [1, 576]"),
        (["--keep", "577"], "keep must be an integer in [1, N] = [1, 576]"),
        (["--keep", "many"], "argument --keep: invalid int value: 'many'"),
        (["--rate", "1"], "rate must be a number in [0, 1)"),
        (["--quantize", "int2"], "argument --quantize: invalid choice: 'int2'"),
        (["--random-weights", "--model-path", "ckpt"], "give a checkpoint (model_path) or random weights, not both"),
    ],
)
def test_usage_errors_exit_2(fake, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert fake == []


def test_missing_weights_are_reported(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    assert cli.main(["-m", "llava-1.5-7b", "--model-path", str(empty), "-o", str(out), "--keep", "64"]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "hf download llava-hf/llava-1.5-7b-hf" in err
    assert list((out / "llava-1.5-7b").iterdir()) == []  # the staging folder is removed


def test_unwritable_output_dir_is_reported(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["-o", str(blocker / "artifacts"), "--skip-parity"]) == 2
    assert f"cannot write the artifact under {blocker / 'artifacts'}" in capsys.readouterr().err


def test_onnx_export_with_parity_end_to_end(tiny_dir, tmp_path, capsys):
    argv = ["--keep", "64", "--backends", "onnx", "--model-path", str(tiny_dir), "-o", str(tmp_path)]
    assert cli.main(argv) == 0
    folder = tmp_path / "tiny-llava" / "keep64"
    manifest = read_manifest(folder)
    assert verify_files(folder) == []
    assert not (folder / "executorch").exists()
    parity = manifest["parity"]
    assert parity["passed"] and list(parity["backends"]) == ["onnx"]
    assert parity["quantization"] == "none" and parity["backends"]["onnx"]["exact"]
    assert parity["backends"]["onnx"]["kept_indices_equal"]
    assert parity["backends"]["onnx"]["logits_max_abs"] <= 1e-4
    assert manifest["export_seconds"]["parity"] > 0 and manifest["peak_rss_mib"]["parity"] > 0
    assert "PASSED" in capsys.readouterr().out


def test_random_weights_int4_onnx_export_with_parity_end_to_end(tmp_path, capsys):
    argv = ["--keep", "64", "--backends", "onnx", "--random-weights", "--seed", "5", "--quantize", "int4"]
    assert cli.main([*argv, "-o", str(tmp_path)]) == 0
    folder = tmp_path / "tiny-llava" / "keep64-int4"
    manifest = read_manifest(folder)
    assert verify_files(folder) == []
    assert manifest["model"] == {
        "name": "tiny-llava",
        "source": "random",
        "checkpoint": None,
        "seed": 5,
        "dtype": "float32",
        "quantization": "int4",
    }
    # Every linear of the decoder layers and the LM head: 4 x 7 + 1, weight-only 4-bit.
    for graph in ("prefill", "decode"):
        nodes = onnx.load(str(folder / "onnx" / f"{graph}.onnx"), load_external_data=False).graph.node
        bits = [{a.name: a.i for a in node.attribute}["bits"] for node in nodes if node.op_type == "MatMulNBits"]
        assert bits == [4] * 29, graph
    parity = manifest["parity"]
    assert parity["passed"] and parity["quantization"] == "int4"
    onnx_parity = parity["backends"]["onnx"]
    assert onnx_parity["exact"] and onnx_parity["tokens_equal"] and onnx_parity["logits_max_abs"] <= 1e-4
    assert "PASSED" in capsys.readouterr().out


def test_default_backends_skip_one_that_would_not_fit(fake, monkeypatch, caplog):
    # 24 GiB: the ONNX export of LLaVA-1.5-7B int4 fits (about 11 GiB), the ExecuTorch one (about 27 GiB) not.
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 24 * memory.GIB)
    assert cli.main(["-m", "llava-1.5-7b", "--random-weights"]) == 0
    assert fake[0].backends == (Backend.ONNX,)
    assert "skipping executorch" in caplog.text


def test_no_backend_fitting_is_a_usage_error(fake, monkeypatch, capsys):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 4 * memory.GIB)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-m", "llava-1.5-7b", "--random-weights"])
    assert exit_info.value.code == 2
    assert "needs more memory than this machine has (4 GiB)" in capsys.readouterr().err
