"""The bench CLI on a small setting: it runs and writes well-formed JSON (no claims about speed)."""

from __future__ import annotations

import json

import pytest

from runtime.bench import main as bench_main
from runtime.measure import measure

TIMINGS = {"preprocess_ms", "vision_ms", "embed_ms", "prefill_ms", "time_to_first_token_ms", "decode_ms"}


def _check_measurement(result, *, runs, tokens):
    assert TIMINGS <= set(result["median"]) and len(result["runs"]) == runs
    assert result["median"]["num_generated_tokens"] == tokens
    assert result["peak_rss_mib"] > 0 and result["load_ms"] > 0


def test_bench_cli_writes_json(artifact_dirs, tmp_path, capsys):
    # ONNX Runtime only: each ExecuTorch measurement process spends ~10 s importing executorch.
    path = tmp_path / "bench.json"
    argv = [str(artifact_dirs[64]), "--baseline", str(artifact_dirs[576]), "--backends", "onnx"]
    assert bench_main(argv + ["--runs", "2", "--warmup", "1", "--max-new-tokens", "3", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "speed-up, baseline / pruned" in out and str(path) in out

    report = json.loads(path.read_text())
    assert report["model"] == "tiny-llava"
    assert report["artifacts"]["pruned"]["keep"] == 64 and report["artifacts"]["baseline"]["keep"] == 576
    assert [(r["backend"], r["role"], r["keep"]) for r in report["results"]] == [
        ("onnx", "pruned", 64),
        ("onnx", "baseline", 576),
    ]
    for result in report["results"]:
        _check_measurement(result, runs=2, tokens=3)
    predicted = report["flops"]["predicted_speedup"]
    assert predicted["lm_prefill"] > predicted["end_to_end"] > 1
    assert set(report["speedups"]) == {"onnx"}
    assert set(report["speedups"]["onnx"]) == {
        "vision",
        "prefill",
        "vision_and_prefill",
        "time_to_first_token",
        "decode_tokens_per_s",
    }


def test_bench_without_baseline_predicts_only(artifact_dirs, tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = [str(artifact_dirs[64]), "--backends", "onnx", "--runs", "1", "--warmup", "0", "--max-new-tokens", "2"]
    assert bench_main(argv + ["--json", str(path)]) == 0
    assert "pass --baseline to measure it" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["speedups"] == {} and report["flops"]["reference_keep"] == 576


def test_measure_executorch(artifact_dirs):
    """The measurement the bench runs per process, here in-process for the ExecuTorch backend."""
    result = measure(artifact_dirs[64], "executorch", runs=1, warmup=0, max_new_tokens=2)
    assert result["backend"] == "executorch" and result["keep"] == 64
    _check_measurement(result, runs=1, tokens=2)


@pytest.mark.parametrize("argv, message", [(["--runs", "0"], "runs >= 1"), ([], "does not exist")])
def test_bench_cli_errors(argv, message, tmp_path, artifact_dirs, capsys):
    target = artifact_dirs[64] if argv else tmp_path / "nothing"
    assert bench_main([str(target), *argv, "--json", str(tmp_path / "x.json")]) == 2
    assert message in capsys.readouterr().err
