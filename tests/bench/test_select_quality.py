"""The selection-quality comparison: its metrics on hand-made selections, its scenes, and the CLI
on a small setting (one scene per kind)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.scenes import KINDS, make_scene
from bench.select_quality import METHODS, count_components, main, selection_metrics


def test_metrics_of_a_hand_made_selection():
    # A 4 x 4 grid: object 1 the top-left 2 x 2 block, object 2 the bottom-right token.
    labels = torch.zeros(16, dtype=torch.int64)
    labels[[0, 1, 4, 5]] = 1
    labels[15] = 2
    states = torch.eye(16)
    states[1] = states[0]  # tokens 0 and 1 identical: redundancy 1 for both
    kept = torch.tensor([0, 1, 10])  # two touching tokens of object 1, one isolated background token
    metrics = selection_metrics(kept, labels, states, (4, 4))
    assert metrics == pytest.approx(
        {
            "objects_hit": 1 / 2,
            "object_tokens_kept": 2 / 5,
            "contiguity": 2 / 3,
            "components": 2,
            "redundancy": (1 + 1 + 0) / 3,
        }
    )


def test_components_are_4_connected():
    mask = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    assert count_components(mask) == 3  # diagonal contact does not join
    assert count_components(torch.zeros(3, 3, dtype=torch.bool)) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_scenes_are_deterministic_and_hold_their_objects(kind):
    scene = make_scene(kind, 0)
    assert torch.equal(scene.labels, make_scene(kind, 0).labels) and not torch.equal(scene.labels, make_scene(kind, 1).labels)
    assert scene.num_objects == len(scene.labels.unique()) - 1 >= 6
    assert scene.states.shape == (576, 256) and scene.keys.shape == (576, 128)
    assert scene.attention.shape == (4, 576) and bool((scene.attention.sum(dim=1) < 1).all())
    for method, select in METHODS.items():
        order = select(scene, 64)
        assert order.shape == (64,) and len(set(order.tolist())) == 64, method


def test_cli_writes_table_json_and_figure(tmp_path, capsys):
    path, figure = tmp_path / "q.json", tmp_path / "q.png"
    assert main(["--seeds", "1", "--keeps", "64", "--json", str(path), "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "objects hit" in out and str(path) in out
    results = json.loads(path.read_text())["results"]
    assert set(results) == set(KINDS) and set(results["objects"]) == set(METHODS)
    assert set(results["clutter"]["dart"]["64"]) == {
        "objects_hit",
        "object_tokens_kept",
        "contiguity",
        "components",
        "redundancy",
    }
    assert figure.stat().st_size > 0


def test_cli_refuses_a_keep_out_of_range(tmp_path, capsys):
    assert main(["--keeps", "577", "--json", str(tmp_path / "q.json")]) == 2
    assert "keeps in [1, 576]" in capsys.readouterr().err
