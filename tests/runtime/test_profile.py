"""runtime.profile: one profiled ONNX Runtime generation, time per operator type per graph."""

from __future__ import annotations

import json

import pytest

from runtime.profile import main as profile_main


def test_profile_counts_each_graph_run_and_each_kernel_once(artifact_dirs, tmp_path, capsys):
    path = tmp_path / "profile.json"
    assert profile_main([str(artifact_dirs[64]), "--max-new-tokens", "3", "--json", str(path)]) == 0
    assert "prefill: 1 run(s)" in capsys.readouterr().out

    report = json.loads(path.read_text())
    assert report["keep"] == 64 and report["max_new_tokens"] == 3 and report["warmup"] == 1
    graphs = report["graphs"]
    # The generation after the warm-up one.
    assert (graphs["vision_encoder"]["runs"], graphs["prefill"]["runs"], graphs["decode"]["runs"]) == (1, 1, 2)
    for summary in graphs.values():
        # The selection's Scan holds its body's time: its body's nodes are not counted again.
        assert 0 < summary["kernel_ms"] <= summary["run_ms"]
        assert summary["kernel_ms"] == pytest.approx(sum(op["ms"] for op in summary["ops"].values()))
    # The selection runs in the prefill, as one control-flow node per pass.
    assert graphs["prefill"]["ops"]["Scan"]["calls"] >= 1
    assert "MatMul" in graphs["decode"]["ops"]
