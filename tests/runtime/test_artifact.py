"""Loading an artifact folder: every way it can be broken gives an error that names the problem."""

from __future__ import annotations

import json
import shutil

import pytest

from runtime.artifact import FORMAT_VERSION, ArtifactError, load_artifact
from runtime.generate import Runner


@pytest.fixture
def copy(artifact_dirs, tmp_path):
    """A private copy of the keep-64 artifact, free to break."""
    return shutil.copytree(artifact_dirs[64], tmp_path / "keep64")


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_a_good_artifact_loads(artifact_dirs):
    artifact = load_artifact(artifact_dirs[64])
    assert artifact.keep == 64 and artifact.num_image_tokens == 576
    assert set(artifact.backends) == {"onnx", "executorch"}
    assert artifact.text.eos_token_ids == frozenset([2])
    assert (artifact.dtype, artifact.quantization) == ("float32", "none")


@pytest.mark.parametrize(
    "relative", ["onnx/prefill.onnx", "onnx/weights.data", "executorch/model.pte", "processor/tokenizer.json"]
)
def test_corrupted_file(copy, relative):
    path = copy / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{relative} is corrupted: sha256"):
        load_artifact(copy)


def test_truncated_file(copy):
    path = copy / "onnx/decode.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="decode.onnx is corrupted: 100 bytes"):
        load_artifact(copy)


def test_corrupted_file_stops_the_runner(copy):
    (copy / "onnx/vision_encoder.onnx").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="vision_encoder.onnx is corrupted"):
        Runner(copy, "onnx")


def test_missing_file(copy):
    (copy / "executorch/model.pte").unlink()
    with pytest.raises(FileNotFoundError, match="model.pte is listed in manifest.json but missing"):
        load_artifact(copy)


def test_missing_manifest(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        load_artifact(copy)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_artifact(tmp_path / "nothing")


@pytest.mark.parametrize("version", [1, FORMAT_VERSION + 1, 0, str(FORMAT_VERSION), None])
def test_other_format_version(copy, version):
    _edit_manifest(copy, lambda m: m.update(format_version=version))
    with pytest.raises(ArtifactError, match=f"format_version {version!r}; this runtime reads format_version {FORMAT_VERSION}"):
        load_artifact(copy)


def test_manifest_not_json(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(copy)


def test_manifest_missing_a_field(copy):
    _edit_manifest(copy, lambda m: m["text"].pop("max_seq_len"))
    with pytest.raises(ArtifactError, match="misses the field text.max_seq_len"):
        load_artifact(copy)


@pytest.mark.parametrize("value", ["int4", 8, None])
def test_unknown_vision_quantization(copy, value):
    _edit_manifest(copy, lambda m: m["model"].update(vision_quantization=value))
    with pytest.raises(ArtifactError, match="model.vision_quantization must be"):
        load_artifact(copy)


def test_an_int8_vision_tower_beside_onnx_files(copy):
    """The ONNX graphs have no int8 vision tower: a manifest claiming one beside them is contradictory."""
    _edit_manifest(copy, lambda m: m["model"].update(vision_quantization="int8"))
    with pytest.raises(ArtifactError, match="an int8 vision tower is ExecuTorch's, yet ONNX files are listed"):
        load_artifact(copy)


def test_file_entry_outside_the_folder(copy):
    _edit_manifest(copy, lambda m: m["files"].update({"../secret": {"bytes": 1, "sha256": "0"}}))
    with pytest.raises(ArtifactError, match="not a path inside the artifact folder"):
        load_artifact(copy)


def test_backend_the_artifact_lacks(copy):
    def drop_pte(manifest):
        del manifest["files"]["executorch/model.pte"]

    _edit_manifest(copy, drop_pte)
    artifact = load_artifact(copy)
    assert artifact.backends == ("onnx",)
    with pytest.raises(ArtifactError, match="holds no executorch export"):
        Runner(artifact, "executorch")


def test_unknown_backend(artifact_dirs):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Runner(artifact_dirs[64], "tensorrt")


def test_a_file_given_as_the_folder(copy):
    with pytest.raises(ArtifactError, match="is a file; give the artifact folder"):
        load_artifact(copy / "manifest.json")


@pytest.mark.parametrize(
    ("parity", "status"),
    [({"status": "passed", "report": {}}, "passed"), ({"status": "failed", "report": {}}, "failed"),
     ({"status": "skipped"}, "skipped"), ({"status": "pending"}, "interrupted")],
)
def test_parity_status(copy, parity, status):
    _edit_manifest(copy, lambda m: m.update(parity=parity))
    artifact = load_artifact(copy)
    assert artifact.parity == status
    if status == "failed":
        with pytest.raises(ArtifactError, match=r"failed its parity check .* \(onnx\)"):
            artifact.require_parity("onnx")
    artifact.require_parity("onnx", allow_failed=True)


def test_a_failed_parity_check_refuses_only_the_backends_it_failed(copy):
    # E.g. ONNX Runtime exact, ExecuTorch's 8da4w outside the statistical criteria.
    report = {"preprocess_passed": True, "backends": {"onnx": {"passed": True}, "executorch": {"passed": False}}}
    _edit_manifest(copy, lambda m: m.update(parity={"status": "failed", "report": report}))
    artifact = load_artifact(copy)
    assert (artifact.parity, artifact.parity_on("onnx"), artifact.parity_on("executorch")) == ("failed", "passed", "failed")
    artifact.require_parity("onnx")
    with pytest.raises(ArtifactError, match=r"failed its parity check .* \(executorch\)"):
        artifact.require_parity("executorch")
    # Preprocessing that failed fails every backend.
    report["preprocess_passed"] = False
    _edit_manifest(copy, lambda m: m.update(parity={"status": "failed", "report": report}))
    assert load_artifact(copy).parity_on("onnx") == "failed"


@pytest.mark.parametrize("parity", [None, {}, {"status": "fine"}, "passed"])
def test_unknown_parity_status(copy, parity):
    _edit_manifest(copy, lambda m: m.update(parity=parity))
    with pytest.raises(ArtifactError, match="parity.status must be one of"):
        load_artifact(copy)


def test_symlink_leaving_the_folder(copy, tmp_path):
    outside = tmp_path / "outside.json"
    shutil.copy(copy / "processor/tokenizer.json", outside)
    (copy / "processor/tokenizer.json").unlink()
    (copy / "processor/tokenizer.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symbolic link to .*outside the artifact folder"):
        load_artifact(copy)


def test_symlink_inside_the_folder_is_fine(copy):
    (copy / "processor/alias.json").symlink_to(copy / "processor/tokenizer.json")
    load_artifact(copy)


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("pruning", "keep", 128, "keep: manifest 128, graphs 64"),
        ("text", "max_seq_len", 4096, "max_seq_len: manifest 4096, graphs 2048"),
        ("text", "num_kv_heads", 1, "num_kv_heads: manifest 1"),
        ("text", "head_dim", 3, "head_dim: manifest 3"),
        ("text", "hidden_size", 5, "hidden_size: manifest 5"),
        ("geometry", "num_image_tokens", 100, "prompt_image_tokens: manifest 100, graphs 576"),
    ],
)
def test_manifest_contradicting_the_graphs(copy, backend, section, key, value, words):
    _edit_manifest(copy, lambda m: m[section].update({key: value}))
    with pytest.raises(ArtifactError, match=f"the manifest contradicts the .* graphs .*{words}"):
        Runner(copy, backend)


@pytest.mark.parametrize(
    ("backend", "words"),
    [
        ("onnx", "vision_encoder.onnx does not follow the artifact contract: outputs"),
        # Read as selecting in the vision graph: its vision_encoder returns no kept indices.
        ("executorch", "method vision_encoder takes 1 and returns 1 tensors, the manifest's contract says 1 and 3"),
    ],
)
def test_manifest_claiming_a_selection_in_the_vision_graph(copy, backend, words):
    """The vision graph of a prefill-selecting artifact returns no kept indices: refused, not misread."""
    _edit_manifest(copy, lambda m: m["pruning"].update({"graph": "vision_encoder"}))
    with pytest.raises(ArtifactError, match=words):
        Runner(copy, backend)


def test_manifest_with_an_unknown_selection_graph(copy):
    _edit_manifest(copy, lambda m: m["pruning"].update({"graph": "decode"}))
    with pytest.raises(ArtifactError, match="pruning.graph must be one of prefill, vision_encoder, got 'decode'"):
        Runner(copy, "onnx")
