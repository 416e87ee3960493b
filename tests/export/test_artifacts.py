"""Exported tiny-llava artifacts at keep 64, 192 and 576 (unpruned): files, interface, parity with eager.

The artifacts come from the session fixtures of tests/export/fixtures.py (one export per keep,
both backends), run through the runtime's sessions.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export.manifest import read_manifest, verify_files
from export.onnx_weights import ALIGNMENT
from runtime.artifact import load_artifact
from runtime.backends import BACKENDS, open_session
from runtime.contract import FORMAT_VERSION, GRAPH_NAMES, PTE_METADATA, graph_io, pte_io, pte_methods
from runtime.eager import EagerModel
from tests.export.fixtures import GROUPED_KEEPS, TEST_KEEPS
from tests.models.conftest import embed

N = 576
NUM_LAYERS = 4
PRUNE_LAYER = 2
# Largest max-abs logits difference to eager float32.
TOLERANCE = {"onnx": 1e-4, "executorch": 1e-3}
DECODE_STEPS = 4
PROMPTS = (
    "What is in the image?",
    # A longer conversation: another prompt length T and the image block further in.
    "A chat between a curious user and an artificial intelligence assistant. USER: <image>\nWhy? ASSISTANT:",
)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def eager(tiny):
    models = {}

    def build(keep: int) -> EagerModel:
        if keep not in models:
            models[keep] = EagerModel.from_loaded(tiny, keep=keep)
        return models[keep]

    return build


def prompt_inputs(model: EagerModel, image: Image.Image, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [1, T] and pixel_values [1, 3, 336, 336]; a prompt holding <image> is used as is."""
    if "<image>" not in prompt:
        return tuple(torch.from_numpy(x) for x in model.prepare_inputs(image, prompt))
    processed = model.processor(images=image, text=prompt, return_tensors="pt")
    return processed["input_ids"], processed["pixel_values"]


@pytest.mark.parametrize("keep", TEST_KEEPS)
def test_manifest_lists_every_file_with_its_size_and_sha256(exported_artifact, tiny_dir, keep):
    folder = exported_artifact(keep)
    manifest = read_manifest(folder)
    assert verify_files(folder) == []
    assert set(manifest["files"]) == {
        *(f"onnx/{name}.onnx" for name in GRAPH_NAMES),
        "onnx/weights.data",
        "executorch/model.pte",
        "processor/tokenizer.json",
        "processor/tokenizer_config.json",
        "processor/processor_config.json",
        "processor/chat_template.jinja",
    }
    assert manifest["format_version"] == FORMAT_VERSION == 11
    assert manifest["model"] == {
        "name": "tiny-llava",
        "family": "llava",
        "source": "checkpoint",
        "checkpoint": str(tiny_dir.resolve()),
        "seed": None,
        "dtype": "float32",
        "quantization": "none",
        "vision_quantization": "none",
        "onnx_profile": "exact",
    }
    assert manifest["pruning"]["keep"] == keep
    assert manifest["pruning"]["prune_layer"] == PRUNE_LAYER
    assert manifest["pruning"]["rate"] == pytest.approx(1 - keep / N, abs=1e-6)
    assert manifest["pruning"]["config"]["kappa"] == 4
    assert manifest["pruning"]["method"] == "vlm-pruner" and manifest["pruning"]["min_text_after_image"] == 0
    assert manifest["pruning"]["graph"] == "prefill"
    assert manifest["geometry"] == {
        "num_image_tokens": N,
        "grid": [24, 24],
        "image_size": 336,
        "pixel_values_shape": [1, 3, 336, 336],
        "position_rows": 1,
    }
    assert manifest["text"]["num_layers"] == NUM_LAYERS and manifest["text"]["max_seq_len"] == 2048
    assert manifest["preprocess"]["resample"] == "bicubic"
    assert set(manifest["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime", "executorch"}
    assert all(manifest["versions"][name] for name in ("torch", "onnx", "onnxruntime", "executorch"))
    stages = manifest["export_seconds"]
    assert {
        "load",
        "wrap",
        "torch_export.prefill",
        "onnx.prefill",
        "executorch.torch_export.token_embedding",
        "executorch.lower",
        "check",
        "processor",
        "hash",
    } <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())
    # The process's peak memory so far, after each stage: positive and never decreasing.
    peaks = manifest["peak_rss_mib"]
    assert list(peaks) == list(stages)
    assert 0 < peaks["load"] and list(peaks.values()) == sorted(peaks.values())
    assert manifest["parity"] == {"status": "skipped"}  # the fixtures skip it; the CLI test covers it


def test_corrupted_file_is_reported(exported_artifact, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported_artifact(64), folder)
    tokenizer = folder / "processor" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:-1] + b" ")
    (folder / "stray.txt").write_text("x")
    assert verify_files(folder) == [
        "processor/tokenizer.json: sha256 differs from the manifest",
        "stray.txt: not in the manifest",
    ]


@pytest.mark.parametrize("keep", TEST_KEEPS)
def test_onnx_graphs_follow_the_contract(exported_artifact, keep):
    folder = exported_artifact(keep) / "onnx"
    for name in GRAPH_NAMES:
        inputs, outputs = graph_io(name, NUM_LAYERS)
        model = onnx.load(str(folder / f"{name}.onnx"))
        assert tuple(value.name for value in model.graph.input) == inputs
        assert tuple(value.name for value in model.graph.output) == outputs
    assert graph_io("prefill", 1)[0] == ("inputs_embeds", "position_ids", "image_positions")

    prefill = onnx.load(str(folder / "prefill.onnx"))
    shapes = {value.name: _dims(value) for value in prefill.graph.output}
    assert shapes["kept_indices"] == shapes["selection_order"] == [keep]
    assert shapes["logits"] == [1, 320]
    assert shapes["present.0.key"] == [1, 2, "sequence_length", 16]
    inputs = {value.name: _dims(value) for value in prefill.graph.input}
    assert inputs["position_ids"] == [1, 1, "sequence_length"] and inputs["image_positions"] == [N]
    pruned_length = "sequence_length" if keep == N else f"sequence_length - {N - keep}"
    assert shapes[f"present.{NUM_LAYERS - 1}.value"] == [1, 2, pruned_length, 16]
    scans = sum(node.op_type == "Scan" for node in prefill.graph.node)
    assert scans > 0 if keep < N else scans == 0
    # The bound M, which no shape carries, for the runtime to check the manifest against.
    for name in ("embed_tokens", "prefill", "decode"):
        metadata = {prop.key: prop.value for prop in onnx.load(str(folder / f"{name}.onnx")).metadata_props}
        assert metadata["max_seq_len"] == "2048"

    decode = onnx.load(str(folder / "decode.onnx"))
    inputs = {value.name: _dims(value) for value in decode.graph.input}
    assert inputs["past.0.key"] == [1, 2, "cache_capacity", 16]
    assert inputs[f"past.{NUM_LAYERS - 1}.key"] == [1, 2, "cache_capacity" if keep == N else "pruned_cache_capacity", 16]
    assert inputs["cache_lengths"] == [NUM_LAYERS]
    # The attention over the cache is ONNX Runtime's, which writes the bound buffers in place.
    assert sum(node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft" for node in decode.graph.node) == NUM_LAYERS
    assert not any(node.op_type == "Concat" and "past" in " ".join(node.input) for node in decode.graph.node)


def test_onnx_graphs_share_one_weights_file(exported_artifact):
    folder = exported_artifact(64) / "onnx"
    regions = {}
    for name in GRAPH_NAMES:
        model = onnx.load(str(folder / f"{name}.onnx"), load_external_data=False)
        entries = [{e.key: e.value for e in tensor.external_data} for tensor in model.graph.initializer]
        external = [entry for entry in entries if entry]
        assert external and all(entry["location"] == "weights.data" for entry in external), name
        regions[name] = {(int(entry.get("offset", 0)), int(entry["length"])) for entry in external}
    # The language model's weights are stored once: decode reads prefill's bytes.
    assert regions["decode"] <= regions["prefill"]
    # The file holds these regions and their alignment padding, nothing more.
    unique = set().union(*regions.values())
    stored = sum(length for _, length in unique)
    assert stored <= (folder / "weights.data").stat().st_size <= stored + ALIGNMENT * len(unique)


@pytest.mark.parametrize("keep", TEST_KEEPS)
def test_pte_methods_follow_the_contract(exported_artifact, keep):
    """The language model split at layer K with one decoder layer per method (keeps 64 and N, pruned
    or not: `GROUPED_KEEPS`), or in one method each side of K (pruned, keep 192)."""
    from executorch.runtime import Runtime

    folder = exported_artifact(keep)
    text = read_manifest(folder)["text"]
    program = Runtime.get().load_program(folder / "executorch" / "model.pte")
    split = keep < N
    methods = pte_methods(pruned=split, layer_groups=1 if keep in GROUPED_KEEPS else 0)
    assert set(program.method_names) == {*methods, *PTE_METADATA}
    for name in methods:
        meta = program.metadata(name)
        inputs, outputs = pte_io(name, position_rows=1)
        assert (meta.num_inputs(), meta.num_outputs()) == (len(inputs), len(outputs))
    assert tuple(program.metadata("vision_encoder").output_tensor_meta(0).sizes()) == (1, N, text["hidden_size"])
    if split:
        select = program.metadata("select_tokens")
        assert tuple(select.output_tensor_meta(2).sizes()) == tuple(select.output_tensor_meta(3).sizes()) == (keep,)
    metadata = {name: program.load_method(name).execute([]) for name in PTE_METADATA}
    assert metadata["get_max_seq_len"] == metadata["get_max_context_len"] == [text["max_seq_len"]]
    assert metadata["use_kv_cache"] == metadata["enable_dynamic_shape"] == [True]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep", TEST_KEEPS)
def test_sessions_match_eager(exported_artifact, eager, image, keep, backend):
    """Each backend's session: vision, embeddings, prefill (selection, logits) and greedy decode
    steps fed the eager model's tokens, against the eager modules. ONNX hands the cache out (its
    per-layer lengths and values are checked too); the .pte keeps it inside the program."""
    session = open_session(load_artifact(exported_artifact(keep)), backend)
    model = eager(keep)
    tolerance = TOLERANCE[backend]
    for prompt in PROMPTS:
        input_ids, pixel_values = prompt_inputs(model, image, prompt)
        modules = model.session
        with torch.no_grad():
            expected_image, expected_text = modules.vision(pixel_values), modules.embedding(input_ids)
            inputs_embeds, position_ids, image_positions = embed(model, input_ids, pixel_values)
            expected_logits, expected_kept, expected_order, eager_cache = modules.prefill_module(
                inputs_embeds, position_ids, image_positions
            )
        image_embeds, _ = session.vision_encoder(pixel_values.numpy())
        np.testing.assert_allclose(image_embeds, expected_image.numpy(), atol=tolerance, rtol=0)
        np.testing.assert_allclose(session.embed_tokens(input_ids.numpy()), expected_text.numpy(), atol=tolerance, rtol=0)

        logits, (kept, order), cache = session.prefill(inputs_embeds.numpy(), position_ids.numpy(), image_positions.numpy())
        np.testing.assert_array_equal(kept, expected_kept.numpy())
        np.testing.assert_array_equal(order, expected_order.numpy())
        np.testing.assert_allclose(logits, expected_logits.numpy(), atol=tolerance, rtol=0)
        seq_len = inputs_embeds.shape[1]
        lengths = [seq_len] * PRUNE_LAYER + [seq_len - N + keep] * (NUM_LAYERS - PRUNE_LAYER)
        if backend == "onnx":
            assert [entry.shape[2] for entry in cache] == [length for length in lengths for _ in range(2)]
            for got, want in zip(cache, [entry for pair in eager_cache for entry in pair], strict=True):
                np.testing.assert_allclose(got, want.numpy(), atol=tolerance, rtol=0)

        for step in range(DECODE_STEPS):
            token = expected_logits.argmax(dim=-1, keepdim=True)  # [1, 1]
            position = torch.tensor([[[seq_len + step]]])
            with torch.no_grad():
                token_embeds = modules.embedding(token)
                expected_logits, eager_cache = modules.decode_module(token_embeds, position, eager_cache)
            logits, cache = session.decode(token_embeds.numpy(), position.numpy(), cache)
            np.testing.assert_allclose(logits, expected_logits.numpy(), atol=tolerance, rtol=0)
            if backend == "onnx":  # the buffers, written in place, hold the eager cache
                assert cache.lengths.tolist() == [length + step + 1 for length in lengths]
                for got, want in zip(cache.buffers, [entry for pair in eager_cache for entry in pair], strict=True):
                    np.testing.assert_allclose(got[:, :, : want.shape[2]], want.numpy(), atol=tolerance, rtol=0)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value.type.tensor_type.shape.dim]
