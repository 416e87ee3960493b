"""The bench CLI on a small setting: it runs and writes well-formed JSON (no claims about speed)."""

from __future__ import annotations

import json
import shutil

import pytest

from runtime.artifact import Artifact, load_artifact
from runtime.bench import compute_kind, default_json_path, main as bench_main
from runtime.flops import ModelDims, kv_cache_bytes
from runtime.measure import measure

TIMINGS = {"preprocess_ms", "vision_ms", "embed_ms", "prefill_ms", "time_to_first_token_ms", "decode_ms"}


def _check_measurement(result, *, runs, tokens):
    assert TIMINGS <= set(result["median"]) and len(result["runs"]) == runs
    assert result["median"]["num_generated_tokens"] == tokens
    assert result["peak_rss_mib"] > 0 and result["load_ms"] > 0
    # Physical memory after the runs: each shared page once, so at most the resident pages.
    assert 0 < result["pss_after_mib"] <= result["peak_rss_mib"]


def test_bench_cli_writes_json(artifact_dirs, tmp_path, capsys):
    # ONNX Runtime only: each ExecuTorch measurement process spends ~10 s importing executorch.
    path = tmp_path / "bench.json"
    argv = [str(artifact_dirs[64]), str(artifact_dirs[192]), "--baseline", str(artifact_dirs[576])]
    argv += ["--backends", "onnx", "--runs", "2", "--warmup", "1", "--max-new-tokens", "3", "--json", str(path)]
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    assert "speed-up over keep 576" in out and str(path) in out

    report = json.loads(path.read_text())
    assert report["model"] == "tiny-llava" and report["quantization"] == "none"
    assert [a["keep"] for a in report["artifacts"]["pruned"]] == [64, 192]
    assert report["artifacts"]["baseline"]["keep"] == 576
    assert [(r["backend"], r["role"], r["keep"], r["method"]) for r in report["results"]] == [
        ("onnx", "pruned", 64, "vlm-pruner"),
        ("onnx", "pruned", 192, "vlm-pruner"),
        ("onnx", "baseline", 576, "vlm-pruner"),
    ]
    for result in report["results"]:
        _check_measurement(result, runs=2, tokens=3)
    # The KV cache after the prompt and 3 new tokens, smaller the fewer image tokens are kept.
    dims = ModelDims.from_manifest(load_artifact(artifact_dirs[64]).manifest)
    prompt_tokens = report["settings"]["prompt_tokens"]
    for result in report["results"]:
        expected = kv_cache_bytes(dims, prompt_tokens=prompt_tokens, keep=result["keep"], new_tokens=3) / 2**20
        assert result["kv_cache_mib"] == pytest.approx(expected)
    assert [r["kv_cache_mib"] for r in report["results"]] == sorted(r["kv_cache_mib"] for r in report["results"])
    assert report["flops"].keys() == {"vlm-pruner"}
    predicted = {keep: flops["predicted_speedup"] for keep, flops in report["flops"]["vlm-pruner"].items()}
    assert set(predicted) == {"64", "192"}
    assert predicted["64"]["lm_prefill"] > predicted["192"]["lm_prefill"] > predicted["192"]["end_to_end"] > 1
    assert report["speedups"].keys() == {"onnx"} and report["speedups"]["onnx"].keys() == {"vlm-pruner"}
    assert report["speedups"]["onnx"]["vlm-pruner"].keys() == {"64", "192"}
    assert set(report["speedups"]["onnx"]["vlm-pruner"]["64"]) == {
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
    assert "vlm-pruner keep 64: predicted speed-up vs keep 576" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["speedups"] == {} and report["flops"]["vlm-pruner"]["64"]["reference_keep"] == 576
    # The machine's limits, measured before the runs, and each run against them.
    assert set(report["limits"]) == {"float32_gflops", "int8_gops", "read_gbps"}
    assert all(value > 0 for value in report["limits"].values())
    (result,) = report["results"]
    of_limits, median = result["of_limits"], result["median"]
    assert of_limits["compute"] == "float32"  # float32 weights
    assert of_limits["prefill_of_peak"] == pytest.approx(of_limits["prefill_gflops"] / report["limits"]["float32_gflops"])
    assert of_limits["decode_of_bound"] == pytest.approx(median["decode_tokens_per_s"] / of_limits["decode_bound_tokens_per_s"])


@pytest.mark.parametrize(("field", "value"), [("quantization", "int4"), ("onnx_profile", "fast")])
def test_artifacts_of_different_quantizations_or_profiles_are_not_compared(artifact_dirs, tmp_path, capsys, field, value):
    other = shutil.copytree(artifact_dirs[64], tmp_path / f"keep64-{value}")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"][field] = value
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert bench_main([str(artifact_dirs[64]), str(other), "--json", str(tmp_path / "x.json")]) == 2
    assert "different models or quantizations (language model, vision tower) or ONNX profiles" in capsys.readouterr().err


def test_default_json_name_lists_every_keep_and_other_methods():
    usual = "vlm-pruner"
    artifacts = {"pruned": [{"keep": 64, "method": usual}, {"keep": 128, "method": usual}]}
    path = default_json_path({"model": "llava-1.5-7b", "artifacts": artifacts | {"baseline": {"keep": 576, "method": usual}}})
    assert path.name == "runtime-llava-1.5-7b-keep64-128-vs-keep576.json"
    artifacts = {"pruned": [{"keep": 64, "method": "fastv"}]}
    assert default_json_path({"model": "tiny-llava", "artifacts": artifacts}).name == "runtime-tiny-llava-keep64.json"
    artifacts = {"pruned": [{"keep": 64, "method": usual}, {"keep": 64, "method": "dart"}], "baseline": {"keep": 576, "method": usual}}
    assert default_json_path({"model": "tiny-llava", "artifacts": artifacts}).name == (
        "runtime-tiny-llava-keep64-64-dart-vs-keep576.json"
    )


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


@pytest.mark.parametrize(
    ("quantization", "profile", "backend", "kind"),
    [
        ("none", "exact", "onnx", "float32"),
        ("none", "exact", "executorch", "float32"),
        ("int4", "exact", "onnx", "float32"),  # MatMulNBits weight-only
        ("int4", "fast", "onnx", "int8"),
        ("int4", "exact", "executorch", "int8"),  # 8da4w
        ("int8", "exact", "executorch", "int8"),
    ],
)
def test_the_prefill_is_held_to_the_gemm_peak_of_its_arithmetic(quantization, profile, backend, kind):
    manifest = {"model": {"quantization": quantization, "onnx_profile": profile}}
    artifact = Artifact(**{**dict.fromkeys(Artifact.__dataclass_fields__), "manifest": manifest})
    assert compute_kind(artifact, backend) == kind
