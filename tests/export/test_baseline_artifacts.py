"""The paper's baselines exported end to end: FastV on tiny-llava and DART on tiny-qwen2-vl (so
that each family runs a question-dependent selector), both backends, parity against eager (which
equals transformers' layers composed by hand, tests/models/test_selectors.py), the manifest and
the folder name, and the runtime CLI."""

from __future__ import annotations

import pytest

from export.__main__ import take_reference
from export.config import ExportConfig
from export.manifest import read_manifest
from export.pipeline import ExportPipeline
from models import build_tiny_qwen2_vl
from runtime.__main__ import main as runtime_main
from runtime.eager import EagerModel
from runtime.parity import check_parity
from runtime.samples import sample_image
from tests.export.parity_checks import assert_exact_parity

STEPS = 16
# method -> (model, keep)
CASES = {"fastv": ("tiny-llava", 64), "dart": ("tiny-qwen2-vl", 28)}


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """method -> (artifact folder, parity report), exported on first use."""
    root = tmp_path_factory.mktemp("baseline-artifacts")
    checkpoints = {"tiny-llava": lambda: tiny_dir, "tiny-qwen2-vl": lambda: build_tiny_qwen2_vl(root / "tiny-qwen2-vl")}
    done = {}

    def export(method: str):
        if method not in done:
            model, keep = CASES[method]
            config = ExportConfig(model=model, keep=keep, method=method, model_path=checkpoints[model](), output_dir=root)
            pipeline = ExportPipeline(config)
            folder = pipeline.run()
            done[method] = folder, check_parity(folder, reference=take_reference(pipeline), steps=STEPS)
        return done[method]

    return export


@pytest.mark.parametrize("method", sorted(CASES))
def test_parity_on_both_backends(exported, method):
    assert_exact_parity(exported(method)[1], ("onnx", "executorch"), STEPS)


@pytest.mark.parametrize("method", sorted(CASES))
def test_manifest_and_folder_name_tell_the_method(exported, method):
    folder, _ = exported(method)
    model, keep = CASES[method]
    assert folder.name == f"keep{keep}-{method}" and folder.parent.name == model
    pruning = read_manifest(folder)["pruning"]
    assert pruning["method"] == method and pruning["config"] == {}
    assert pruning["min_text_after_image"] == (4 if method == "dart" else 0)


def test_runtime_cli_answers_and_names_the_method(exported, tmp_path, capfd):
    folder, _ = exported("fastv")
    path = tmp_path / "photo.png"
    sample_image().save(path)
    code = runtime_main([str(folder), "--image", str(path), "--prompt", "What is shown?", "--backend", "executorch"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert out.strip() and "[executorch, keep 64, fastv, parity skipped" in err


def test_parity_refuses_a_reference_of_another_method(exported, tiny):
    folder, _ = exported("fastv")
    with pytest.raises(ValueError, match="the reference selects with vlm-pruner, the artifact with fastv"):
        check_parity(folder, reference=EagerModel.from_loaded(tiny, keep=64), steps=1)
