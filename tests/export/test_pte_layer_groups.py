"""A .pte whose language model is lowered in groups of layers (`--pte-layers-per-method`), one
method at a time, the model's weights freed as they are lowered (`export.executorch.save_pte`).

Exported grouped .pte files against eager (pruned and unpruned, one layer per method) are the
shared tiny-llava artifacts of keeps 64 and 576 (`tests.export.fixtures.GROUPED_KEEPS`), which
tests/export/test_artifacts.py and tests/runtime check like every other.
"""

from __future__ import annotations

import pytest
import torch

from export.config import ExportConfig
from export.executorch import save_pte
from export.graphs import build_pte_graphs, layer_groups
from export.manifest import build_manifest, read_manifest
from export.pipeline import ExportPipeline
from models import MODEL_SPECS, load_for_export
from models.quantize import Quantization
from runtime.contract import pte_layer_groups, pte_methods
from tests.export.fixtures import export_and_check


def test_lowering_frees_the_weights(tmp_path):
    """`save_pte(..., release=...)`: once lowered, the decoder's linears hold no memory (XNNPACK's
    serialized copy is all the file needs), and the file still runs."""
    from executorch.runtime import Runtime

    spec = MODEL_SPECS["tiny-llava"]
    model = load_for_export("tiny-llava", quantization=Quantization.NONE, seed=0).model
    graphs = build_pte_graphs(model, spec, keep=spec.num_image_tokens, max_seq_len=1024, layers_per_method=1)
    programs = {graph.name: torch.export.export(graph.module, graph.example_inputs, dynamic_shapes=graph.dynamic_shapes) for graph in graphs}
    path = save_pte(programs, tmp_path / "model.pte", release={graph.name: graph.module for graph in graphs})
    for layer in model.model.language_model.layers:
        weights = [_values(module.weight) for module in layer.modules() if isinstance(module, torch.nn.Linear)]
        assert len(weights) == 7 and all(weight.untyped_storage().nbytes() == 0 for weight in weights)
    # The embeddings stay with the program's own constants.
    assert model.model.language_model.embed_tokens.weight.untyped_storage().nbytes() > 0
    assert set(Runtime.get().load_program(path).method_names) >= set(pte_methods(pruned=False, layer_groups=1))


def test_lowering_in_its_own_process(tmp_path, monkeypatch):
    """A model the estimate calls large is lowered in a spawned process that loads it itself; the
    artifact passes the parity check against this process's model, and the manifest records the
    child's stages."""
    monkeypatch.setattr("export.pipeline.OWN_PROCESS_BYTES", 0)
    config = ExportConfig(
        model="tiny-llava", keep=576, random_weights=True, output_dir=tmp_path, backends=("executorch",), layers_per_method=1
    )
    folder, report = export_and_check(config, steps=4)
    assert report.passed, report
    peaks = read_manifest(folder)["peak_rss_mib"]
    assert {"executorch.load", "executorch.lower", "load"} <= set(peaks)


def _values(param: torch.Tensor) -> torch.Tensor:
    """A parameter's values: a quantized weight's integer codes."""
    return getattr(param, "qdata", param).detach()


def test_layer_groups():
    assert layer_groups(range(2, 32), 4) == [range(2, 6), range(6, 10), *(range(a, a + 4) for a in range(10, 30, 4)), range(30, 32)]
    assert layer_groups(range(2, 4), None) == [range(2, 4)]
    assert layer_groups(range(2, 4), 5) == [range(2, 4)]


def test_contract_methods():
    assert pte_methods(pruned=False, layer_groups=None) == ("vision_encoder", "token_embedding", "text_decoder")
    assert pte_methods(pruned=True, layer_groups=2) == (
        "vision_encoder", "token_embedding", "text_decoder_head", "select_tokens",
        "text_decoder_layers_0", "text_decoder_layers_1", "text_decoder_tail",
    )
    assert pte_methods(pruned=False, layer_groups=0)[-2:] == ("text_decoder_head", "text_decoder_tail")
    with pytest.raises(ValueError, match="layer_groups"):
        pte_methods(pruned=True, layer_groups=None)
    assert pte_layer_groups(["text_decoder", "vision_encoder"]) is None
    assert pte_layer_groups(["text_decoder_head", "text_decoder_tail"]) == 0
    assert pte_layer_groups(["text_decoder_head", "text_decoder_layers_1", "text_decoder_layers_0"]) == 2
    with pytest.raises(ValueError, match="text_decoder_layers_0"):
        pte_layer_groups(["text_decoder_head", "text_decoder_layers_1", "text_decoder_tail"])


def test_layers_per_method_out_of_range():
    with pytest.raises(ValueError, match="layers_per_method"):
        ExportConfig(model="tiny-llava", layers_per_method=0)


def test_own_process_lowering_without_parity_reads_no_weights(tmp_path, monkeypatch):
    """An ExecuTorch-only export lowered in its own process, without the parity check: this
    process keeps the model on the meta device, and writes the same manifest sections and
    processor as from the materialized model."""
    monkeypatch.setattr("export.pipeline.OWN_PROCESS_BYTES", 0)
    config = ExportConfig(
        model="tiny-llava", keep=64, random_weights=True, output_dir=tmp_path, backends=("executorch",), layers_per_method=1
    )
    pipeline = ExportPipeline(config)
    folder = pipeline.run(parity=None, keep_model=False)
    assert all(p.is_meta for p in pipeline.loaded.model.parameters())
    manifest = read_manifest(folder)
    assert manifest["parity"]["status"] == "skipped"
    materialized = load_for_export("tiny-llava", quantization=config.quantization, seed=0)
    expected = build_manifest(
        spec=materialized.spec, model=materialized.model, processor=materialized.processor, checkpoint=None,
        seed=0, quantization=config.quantization, vision_quantization=config.vision_quantization,
        onnx_profile=config.onnx_profile, keep=64, method=config.method,
        max_seq_len=config.seq_len_limit, files={}, export_seconds={}, peak_rss_mib={}, parity="skipped",
    )
    measured = {"files", "export_seconds", "peak_rss_mib"}
    assert {key: value for key, value in manifest.items() if key not in measured} == {
        key: value for key, value in expected.items() if key not in measured
    }
