"""The language model's prepacked ONNX graphs (runtime/backends/onnx_prepacked.py): made once per
artifact and machine, one copy of each weight's layout shared by prefill and decode, and the same
logits bit for bit as the artifact's own graphs. The int4 (MatMulNBits) case is in
tests/export/test_memory_saving_export.py, beside its artifact."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from runtime.artifact import Artifact
from runtime.backends import onnx_prepacked
from runtime.backends.onnx_prepacked import (
    CACHE_ENV,
    CACHED_GRAPHS,
    DATA_FILE,
    PREPACKED_DIR,
    cache_root,
    prepacked_graphs,
)
from runtime.generate import GenerationConfig, Greedy, InputProcessor, Runner


def prepacked_entries(path: Path) -> dict[str, str]:
    """{ONNX Runtime's key of a prepacked layout: `location|blobs`} of the graph at `path`."""
    model = onnx.load(str(path), load_external_data=False)
    entries = {}
    for tensor in model.graph.initializer:
        data = {entry.key: entry.value for entry in tensor.external_data}
        for key, value in data.items():
            if key.startswith("prepacked"):
                name, blobs = value.split("|", 1)
                entries[name] = f"{data['location']}|{blobs}"
    return entries


def generate_bits(artifact: Artifact, **runner) -> Greedy:
    """8 greedy tokens and their logits on ONNX Runtime, the family's sample image."""
    processor = InputProcessor.from_artifact(artifact)
    inputs = processor(processor.family.sample(), "What is in the image?")
    config = GenerationConfig(max_new_tokens=8, ignore_eos=True, return_logits=True)
    return Runner(artifact, "onnx", **runner).generate_ids(inputs.input_ids, inputs.pixel_values, config)


def assert_same_bits(cached: Greedy, own: Greedy) -> None:
    assert cached.token_ids == own.token_ids and cached.kept_indices == own.kept_indices
    for ours, theirs in zip(cached.logits, own.logits, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_prefill_and_decode_read_one_copy_of_each_layout(runtime_artifact, tmp_path):
    graphs = prepacked_graphs(runtime_artifact, tmp_path)
    assert set(graphs) == set(CACHED_GRAPHS)
    folder = graphs["prefill"].parent
    assert sorted(path.name for path in folder.iterdir()) == sorted(["decode.onnx", "done.json", "prefill.onnx", DATA_FILE])
    prefill, decode = prepacked_entries(graphs["prefill"]), prepacked_entries(graphs["decode"])
    # Every linear of the language model is packed once, in one file both graphs read.
    assert len(decode) == runtime_artifact.text.num_layers * 7 + 1
    assert decode.items() <= prefill.items()
    assert all(entry.startswith(f"{DATA_FILE}|") for entry in prefill.values())


@pytest.mark.parametrize("low_memory", [False, True], ids=["all-open", "low-memory"])
def test_generation_is_bit_identical_to_the_artifacts_graphs(runtime_artifact, tmp_path, monkeypatch, low_memory):
    monkeypatch.setenv(CACHE_ENV, "")
    own = generate_bits(runtime_artifact, low_memory=low_memory)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cached = generate_bits(runtime_artifact, low_memory=low_memory)
    assert (tmp_path / PREPACKED_DIR).is_dir()
    assert_same_bits(cached, own)


def test_a_second_session_reuses_the_cache(runtime_artifact, tmp_path, monkeypatch):
    made = prepacked_graphs(runtime_artifact, tmp_path)

    def no_second_build(*args):
        raise AssertionError("the cache was built again")

    monkeypatch.setattr(onnx_prepacked, "_save_prepacked", no_second_build)
    assert prepacked_graphs(runtime_artifact, tmp_path) == made


def test_an_unfinished_folder_is_built_again(runtime_artifact, tmp_path):
    made = prepacked_graphs(runtime_artifact, tmp_path)
    folder = made["prefill"].parent
    (folder / "done.json").unlink()
    (folder / DATA_FILE).write_bytes(b"truncated")
    assert prepacked_graphs(runtime_artifact, tmp_path) == made
    assert (folder / "done.json").exists() and (folder / DATA_FILE).stat().st_size > len(b"truncated")


def test_the_cache_can_be_turned_off(runtime_artifact, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "")
    assert cache_root() is None and prepacked_graphs(runtime_artifact) == {}
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "vlm-pruner"


def test_a_failed_build_leaves_nothing_and_falls_back(runtime_artifact, tmp_path, monkeypatch, caplog):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_prepacked, "_merge", full_disk)
    with caplog.at_level(logging.WARNING):
        assert prepacked_graphs(runtime_artifact, tmp_path) == {}
    assert list((tmp_path / PREPACKED_DIR).iterdir()) == []
    assert "No space left on device" in caplog.text and "each session packs its own weights" in caplog.text


def test_an_unwritable_cache_falls_back(runtime_artifact, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert prepacked_graphs(runtime_artifact, blocked) == {}


def test_the_cache_key_follows_the_graphs_and_onnx_runtime(runtime_artifact, artifact_dirs, monkeypatch):
    from runtime.artifact import load_artifact

    key = onnx_prepacked._cache_key(runtime_artifact)
    assert onnx_prepacked._cache_key(load_artifact(artifact_dirs[576])) != key
    monkeypatch.setattr(ort, "__version__", "0.0.0")
    assert onnx_prepacked._cache_key(runtime_artifact) != key


def test_without_the_onnx_package_the_sessions_pack_their_own(runtime_artifact, tmp_path, monkeypatch, caplog):
    """The ONNX Runtime path needs no `onnx` package; only the cache does (to rewrite the graphs)."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    with caplog.at_level(logging.WARNING):
        assert prepacked_graphs(runtime_artifact, tmp_path) == {}
    assert "onnx" in caplog.text and list((tmp_path / PREPACKED_DIR).iterdir()) == []
