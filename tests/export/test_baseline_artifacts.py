"""The paper's baselines exported end to end: FastV on tiny-llava and DART on tiny-qwen2-vl (so
that each family runs a question-dependent selector), DivPrune (selection in the vision graph) on
tiny-llava on both backends and on tiny-qwen2-vl on ONNX Runtime (its M-RoPE positions of the kept
tokens); parity against eager (which equals transformers' layers composed by hand,
tests/models/test_selectors.py), the manifest and the folder name, the graphs' interface, and the
runtime CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export.config import ExportConfig
from export.manifest import read_manifest
from models import build_tiny_qwen2_vl
from pruning_graph import divprune_reference_order, divprune_select
from runtime.__main__ import main as runtime_main
from runtime.artifact import load_artifact
from runtime.eager import EagerModel
from runtime.generate import GenerationConfig, InputProcessor, Runner
from runtime.parity import check_parity, load_reference
from runtime.samples import DEFAULT_PROMPT, sample_image
from runtime.show import draw_selection
from runtime.show import main as show_main
from tests.export.fixtures import export_and_check
from tests.export.parity_checks import assert_exact_parity

STEPS = 16
BOTH = ("onnx", "executorch")
# case -> (method, model, keep, backends)
CASES = {
    "fastv": ("fastv", "tiny-llava", 64, BOTH),
    "dart": ("dart", "tiny-qwen2-vl", 28, BOTH),
    "divprune": ("divprune", "tiny-llava", 64, BOTH),
    "divprune-qwen2-vl": ("divprune", "tiny-qwen2-vl", 28, ("onnx",)),
}


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """case -> (artifact folder, parity report), exported on first use."""
    root = tmp_path_factory.mktemp("baseline-artifacts")
    qwen = root / "checkpoints" / "tiny-qwen2-vl"
    checkpoints = {"tiny-llava": lambda: tiny_dir, "tiny-qwen2-vl": lambda: qwen if qwen.exists() else build_tiny_qwen2_vl(qwen)}
    done = {}

    def export(case: str):
        if case not in done:
            method, model, keep, backends = CASES[case]
            config = ExportConfig(
                model=model, keep=keep, method=method, model_path=checkpoints[model](), backends=backends, output_dir=root
            )
            done[case] = export_and_check(config, STEPS)
        return done[case]

    return export


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity(exported, case):
    assert_exact_parity(exported(case)[1], CASES[case][3], STEPS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_and_folder_name_tell_the_method(exported, case):
    folder, _ = exported(case)
    method, model, keep, _ = CASES[case]
    assert folder.name == f"keep{keep}-{method}" and folder.parent.name == model
    pruning = read_manifest(folder)["pruning"]
    assert pruning["method"] == method and pruning["config"] == {}
    assert pruning["min_text_after_image"] == (4 if method == "dart" else 0)
    assert pruning["graph"] == ("vision_encoder" if method == "divprune" else "prefill")


@pytest.mark.parametrize("case", ["divprune", "divprune-qwen2-vl"])
def test_divprune_prunes_in_the_vision_graph(exported, case):
    """The vision graph returns the R kept tokens and their indices; the language model's graphs are
    those of an unpruned model of R image tokens (no selection, one cache length)."""
    folder, _ = exported(case)
    keep = CASES[case][2]
    vision = onnx.load(str(folder / "onnx" / "vision_encoder.onnx"), load_external_data=False)
    prefill = onnx.load(str(folder / "onnx" / "prefill.onnx"), load_external_data=False)

    def dims(value):
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    outputs = [(v.name, dims(v)[0]) for v in vision.graph.output]
    assert outputs == [("image_embeds", keep), ("kept_indices", keep), ("selection_order", keep)]
    assert {node.op_type for node in vision.graph.node} & {"Scan", "Loop"}
    assert not {node.op_type for node in prefill.graph.node} & {"Scan", "Loop"}
    inputs = {v.name: dims(v) for v in prefill.graph.input}
    assert inputs["image_positions"] == [keep]
    lengths = {tuple(dims(v)) for v in prefill.graph.output if v.name.startswith("present.")}
    assert len(lengths) == 1, lengths


@pytest.mark.parametrize("case", ["divprune", "divprune-qwen2-vl"])
def test_divprune_keeps_divprune_select_of_the_vision_encoder_output(exported, case):
    """The artifact's kept tokens, on each backend, are `divprune_select` on the eager vision
    encoder's output; the prompt holds R image placeholders."""
    folder, _ = exported(case)
    _, _, keep, backends = CASES[case]
    artifact = load_artifact(folder)
    inputs = InputProcessor.from_artifact(artifact)(sample_image(), DEFAULT_PROMPT)
    assert inputs.image_positions.size == keep == artifact.prompt_image_tokens
    encoder = load_reference(artifact).session.vision.encoder  # the family's, before the selection
    with torch.no_grad():
        embeds = encoder(torch.from_numpy(inputs.pixel_values))
    expected = divprune_select(embeds, keep).tolist()
    expected_order = divprune_reference_order(embeds, keep).tolist()
    for backend in backends:
        result = Runner(artifact, backend).generate(sample_image(), DEFAULT_PROMPT, GenerationConfig(max_new_tokens=1))
        assert result.kept_indices == expected, backend
        assert result.selection_order == expected_order, backend


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


def test_show_draws_a_panel_per_method_numbered_in_selection_order(exported, tmp_path, capfd):
    """Each panel is the runtime's selection order drawn on the model's view of the image."""
    folders = [exported(case)[0] for case in ("fastv", "divprune")]
    path, figure = tmp_path / "photo.png", tmp_path / "kept.png"
    sample_image().save(path)
    assert show_main([*map(str, folders), "--image", str(path), "-o", str(figure)]) == 0, capfd.readouterr().err
    drawn = np.asarray(Image.open(figure).convert("RGB"))
    left = 8
    for folder in folders:
        runner = Runner(folder, "onnx")
        order = runner.generate(sample_image(), DEFAULT_PROMPT, GenerationConfig(max_new_tokens=1)).selection_order
        assert sorted(order) != order and len(order) == 64  # a selection order, not the ascending indices
        family = runner.inputs.family
        panel = np.asarray(draw_selection(family.model_view(sample_image()), family.grid, order))
        height, width, _ = panel.shape
        np.testing.assert_array_equal(drawn[30 : 30 + height, left : left + width], panel)
        left += width + 8
    assert drawn.shape[1] == left


def test_show_refuses_artifacts_of_different_models(exported, tmp_path, capfd):
    path = tmp_path / "photo.png"
    sample_image().save(path)
    folders = [str(exported(case)[0]) for case in ("fastv", "divprune-qwen2-vl")]
    assert show_main([*folders, "--image", str(path), "-o", str(tmp_path / "kept.png")]) == 2
    assert "different models (tiny-llava, tiny-qwen2-vl)" in capfd.readouterr().err
    assert not (tmp_path / "kept.png").exists()
