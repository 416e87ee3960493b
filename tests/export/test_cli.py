"""`python -m export`: flag parsing with the pipeline patched out, user errors, one real ONNX run."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import export.__main__ as cli
from export import memory, options, pipeline
from export.config import Backend, ExportConfig
from export.manifest import read_manifest, verify_files, write_manifest
from export.onnx_weights import WeightFile
from export.pipeline import ExportPipeline, ParityCheck
from models import MODEL_SPECS, quantize
from models.quantize import Quantization
from models.selectors import method_names
from runtime.contract import VISION_QUANTIZATIONS
from tests.export.fixtures import REPO
from tests.quantization import MATMUL_NBITS_PER_LAYER


class FakePipeline(ExportPipeline):
    """Records the config; `run` writes a bare manifest in place of the export, then runs the real parity stage."""

    configs: list[ExportConfig] = []

    def run(self, parity: ParityCheck | None = None, *, keep_model: bool = True) -> Path:
        assert not keep_model  # the CLI reads no model after the export
        FakePipeline.configs.append(self.config)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        status = "skipped" if parity is None else "pending"
        write_manifest(self.artifact_dir, {"export_seconds": {}, "peak_rss_mib": {}, "parity": {"status": status}})
        if parity is not None:
            self.check_parity(parity)
        return self.artifact_dir


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """main() with the pipeline and the parity check patched out; returns the recorded configs."""
    FakePipeline.configs = []
    monkeypatch.setattr(pipeline, "ExportPipeline", FakePipeline)
    monkeypatch.setattr(cli, "run_parity", lambda pipeline, steps=None: {"passed": True, "backends": {}})
    monkeypatch.chdir(tmp_path)
    return FakePipeline.configs


def test_torch_free_choices_name_the_registry():
    assert options.MODEL_NAMES == tuple(sorted(MODEL_SPECS))
    assert options.QUANTIZATIONS == tuple(q.value for q in Quantization)
    assert options.METHOD_NAMES == tuple(method_names())
    assert VISION_QUANTIZATIONS == tuple(q.value for q in quantize.VISION_QUANTIZATIONS)


@pytest.mark.parametrize("argv", [["--help"], ["--keep", "0"], ["--model", "nope"]])
def test_help_and_usage_errors_answer_without_importing_torch(argv):
    start = time.perf_counter()
    # -X importtime lists every module imported, on stderr.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "export", *argv], cwd=REPO, capture_output=True, text=True
    )
    assert time.perf_counter() - start < 5  # well under 2 s on an idle machine
    assert result.returncode == (0 if argv == ["--help"] else 2)
    assert not re.search(r"\|\s+torch$", result.stderr, re.MULTILINE)
    if argv == ["--help"]:
        assert "(default 0.889)" in result.stdout and "--clean" in result.stdout


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
    assert read_manifest(tmp_path / "out/tiny-llava/keep192")["parity"] == {"status": "skipped"}


def test_random_weights_and_quantization(fake, tmp_path):
    assert cli.main(["-m", "llava-1.5-7b", "--random-weights", "--seed", "3", "--quantize", "int8"]) == 0
    (config,) = fake
    assert config.random_weights and config.seed == 3 and config.quantization is Quantization.INT8
    assert config.artifact_dir == Path("artifacts/llava-1.5-7b/keep64-int8")


def test_an_int8_vision_tower_defaults_to_executorch_alone(fake):
    assert cli.main(["-m", "llava-1.5-7b", "--random-weights", "--quantize-vision", "int8"]) == 0
    (config,) = fake
    assert config.backends == (Backend.EXECUTORCH,) and config.vision_quantization is Quantization.INT8
    assert config.artifact_dir == Path("artifacts/llava-1.5-7b/keep64-vision-int8")


def test_an_int8_vision_tower_with_onnx_exits_2(fake, capsys):
    assert cli.main(["--quantize-vision", "int8", "--backends", "onnx,executorch"]) == 2
    assert "export it with the executorch backend alone" in capsys.readouterr().err
    assert fake == []


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
    assert manifest["parity"] == {"status": "passed", "report": {"passed": True, "backends": {}}}
    assert set(manifest["export_seconds"]) == {"parity"}
    assert set(manifest["peak_rss_mib"]) == {"parity"} and manifest["peak_rss_mib"]["parity"] > 0


def test_failed_parity_exits_1(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "run_parity", lambda pipeline, steps=None: {"passed": False, "backends": {}})
    assert cli.main([]) == 1
    assert read_manifest(tmp_path / "artifacts/tiny-llava/keep64")["parity"]["status"] == "failed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "64", "--rate", "0.5"], "argument --rate: not allowed with argument --keep"),
        (["-m", "llava-9b"], "argument -m/--model: invalid choice: 'llava-9b'"),
        (["--backends", "onnx,tflite"], "argument --backends: invalid choice 'tflite' (choose from onnx, executorch)"),
        (["--keep", "0"], "argument --keep: must be at least 1, got 0"),
        (["--keep", "many"], "argument --keep: invalid int value: 'many'"),
        (["--rate", "1"], "argument --rate: must be in [0, 1), got 1"),
        (["--quantize", "int2"], "argument --quantize: invalid choice: 'int2'"),
        (["--quantize-vision", "int4"], "argument --quantize-vision: invalid choice: 'int4'"),
        (
            ["--random-weights", "--model-path", "ckpt"],
            "argument --model-path: not allowed with argument --random-weights",
        ),
    ],
)
def test_usage_errors_exit_2(fake, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert fake == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "577"], "error: keep must be an integer in [1, N] = [1, 576] for tiny-llava, got 577\n"),
        (["--max-seq-len", "10"], "error: max_seq_len must be in [640, 4096] for tiny-llava"),
    ],
)
def test_out_of_range_for_the_model_exits_2_with_one_line(fake, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert fake == []


def test_missing_weights_are_reported(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    assert cli.main(["-m", "llava-1.5-7b", "--model-path", str(empty), "-o", str(out), "--keep", "64"]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "hf download llava-hf/llava-1.5-7b-hf" in err
    assert list((out / "llava-1.5-7b").iterdir()) == []  # the staging folder and the lock are removed


def test_broken_config_json_is_reported(tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{not json")
    argv = ["-m", "llava-1.5-7b", "--model-path", str(checkpoint), "-o", str(tmp_path / "out"), "--backends", "onnx"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {checkpoint / 'config.json'} is not valid JSON") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "holds no tiny-llava build"),
        ({"weights.bin": "precious"}, "holds no tiny-llava build"),
        ({"tiny_llava_recipe.json": '{"recipe_sha256": "old"}'}, "holds a tiny-llava build of another recipe"),
    ],
)
def test_model_path_that_is_no_tiny_llava_build_is_left_alone(tmp_path, capsys, content, message):
    folder = tmp_path / "someones"
    if content:
        folder.mkdir()
        for name, text in content.items():
            (folder / name).write_text(text)
    assert cli.main(["--model-path", str(folder), "-o", str(tmp_path / "out"), "--skip-parity"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder} {message}") and "RECIPE.build(" in err
    assert folder.exists() == bool(content)
    if content:
        assert {path.name: path.read_text() for path in folder.iterdir()} == content


def test_full_disk_exits_2_and_removes_the_staging_folder(tiny_dir, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "weights.data"))

    monkeypatch.setattr(WeightFile, "tensor", full)
    argv = ["--keep", "576", "--backends", "onnx", "--model-path", str(tiny_dir), "-o", str(tmp_path / "out")]
    assert cli.main([*argv, "--skip-parity"]) == 2
    err = capsys.readouterr().err
    where = tmp_path / "weights.data"
    assert err == f"error: no space left on the disk while writing {where}; free some space and run again\n"
    assert list((tmp_path / "out" / "tiny-llava").iterdir()) == []


def test_clean_removes_only_leftovers(tmp_path, capsys):
    model = tmp_path / "tiny-llava"
    (model / ".keep64-0123abcd" / "onnx").mkdir(parents=True)
    (model / ".keep64-0123abcd" / "onnx" / "weights.data").write_bytes(b"x" * 2048)
    (model / "keep64").mkdir()
    assert cli.main(["--clean", "-o", str(tmp_path)]) == 0
    assert [p.name for p in model.iterdir()] == ["keep64"]
    assert "1 leftover(s) of killed exports removed" in capsys.readouterr().out


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
    assert manifest["parity"]["status"] == "passed"
    parity = manifest["parity"]["report"]
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
        "family": "llava",
        "source": "random",
        "checkpoint": None,
        "seed": 5,
        "dtype": "float32",
        "quantization": "int4",
        "vision_quantization": "none",
        "onnx_profile": "exact",
    }
    # Every linear of the 4 decoder layers (q, k, v and gate, up joined) and the LM head, weight-only 4-bit.
    for graph in ("prefill", "decode"):
        nodes = onnx.load(str(folder / "onnx" / f"{graph}.onnx"), load_external_data=False).graph.node
        bits = [{a.name: a.i for a in node.attribute}["bits"] for node in nodes if node.op_type == "MatMulNBits"]
        assert bits == [4] * (4 * MATMUL_NBITS_PER_LAYER + 1), graph
    parity = manifest["parity"]["report"]
    assert parity["passed"] and parity["quantization"] == "int4"
    onnx_parity = parity["backends"]["onnx"]
    assert onnx_parity["exact"] and onnx_parity["tokens_equal"] and onnx_parity["logits_max_abs"] <= 1e-4
    assert "PASSED" in capsys.readouterr().out


def test_default_backends_skip_one_that_would_not_fit(fake, monkeypatch, capsys):
    # 14 GiB (12 without the headroom): the ONNX export of LLaVA-1.5-7B int4 fits (about 11 GiB), the
    # ExecuTorch one (about 14 GiB) not.
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 14 * memory.GIB)
    assert cli.main(["-m", "llava-1.5-7b", "--random-weights"]) == 0
    assert fake[0].backends == (Backend.ONNX,)
    assert "skipping executorch" in capsys.readouterr().out


def test_no_backend_fitting_is_a_usage_error(fake, monkeypatch, capsys):
    monkeypatch.setattr(memory, "physical_memory_bytes", lambda: 4 * memory.GIB)
    assert cli.main(["-m", "llava-1.5-7b", "--random-weights"]) == 2
    assert "needs more memory than this machine has (4 GiB)" in capsys.readouterr().err
