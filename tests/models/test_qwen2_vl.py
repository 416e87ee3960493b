"""Qwen2-VL's exportable modules against transformers (tiny-qwen2-vl): vision tower, M-RoPE
positions, unpruned prefill, decode and greedy generation, pruned prefill against a hand
composition with `reference_select`, and the export paths."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch.export import Dim, export
from transformers import DynamicCache, Qwen2VLForConditionalGeneration

from models import TokenEmbedding, get_spec
from models.qwen2_vl import PatchEmbedding, Qwen2VLDecodeStep, Qwen2VLPrefill, Qwen2VLVisionEncoder
from models.qwen2_vl_processor import Qwen2VLImageTextProcessor
from models.tiny_qwen2_vl import build_tiny_qwen2_vl
from pruning_graph import reference_select
from runtime.eager import EagerModel
from runtime.families.qwen2_vl import mrope_position_ids
from runtime.generate import GenerationConfig

ATOL = 1e-5
PATCH_GRID = (1, 16, 16)  # (t, h, w) in patches of the 224 x 224 image
GRID = (8, 8)  # the merged token grid
N = 64
PRUNE_LAYER = 2
STEPS = 16


class Modules:
    """The exportable modules of one keep count, composed like the runtime composes the graphs."""

    def __init__(self, model: Qwen2VLForConditionalGeneration, keep: int):
        self.image_token_id = model.config.image_token_id
        self.vision_encoder = Qwen2VLVisionEncoder(model, grid=PATCH_GRID).eval()
        self.token_embedding = TokenEmbedding(model).eval()
        self.prefill = Qwen2VLPrefill(model, grid=GRID, keep=keep, prune_layer=PRUNE_LAYER).eval()
        self.decode_step = Qwen2VLDecodeStep(model).eval()

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> inputs_embeds [1, T, d], position_ids int64 [3, 1, T], image_positions int64 [N], rope_delta."""
        image_start = int((input_ids[0] == self.image_token_id).nonzero()[0, 0])
        embeds = self.token_embedding(input_ids)
        embeds[0, image_start : image_start + N] = self.vision_encoder(pixel_values)
        position_ids, delta = mrope_position_ids(input_ids.shape[1], image_start, GRID)
        return embeds, torch.from_numpy(position_ids), image_start + torch.arange(N), delta

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, steps: int) -> tuple[list[int], list]:
        """Greedy tokens and the logits [1, V] of each step."""
        embeds, position_ids, image_positions, delta = self.embed(input_ids, pixel_values)
        logits, _, _, cache = self.prefill(embeds, position_ids, image_positions)
        tokens, all_logits = [], []
        for step in range(steps):
            all_logits.append(logits)
            tokens.append(int(logits.argmax()))
            position = torch.full((3, 1, 1), input_ids.shape[1] + step + delta)
            logits, cache = self.decode_step(self.token_embedding(torch.tensor([[tokens[-1]]])), position, cache)
        return tokens, all_logits


@torch.no_grad()
def reference_pruned(model, inputs_embeds, position_ids, image_start: int, keep: int):
    """The pruned model composed by hand: transformers' decoder layers with transformers' cache and
    explicit causal masks, `reference_select`, Python slicing of the sequence and of the 3-row
    position ids. Returns (logits [1, T', V] of every remaining position, kept int64 [R], DynamicCache).
    """
    text = model.model.language_model
    cache = DynamicCache(config=text.config)

    def run(layers, hidden, positions):
        length = hidden.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
        embeddings = text.rotary_emb(hidden, positions)
        for layer in layers:
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=embeddings, past_key_values=cache, use_cache=True
            )
        return hidden

    hidden = run(text.layers[:PRUNE_LAYER], inputs_embeds, position_ids)
    image = slice(image_start, image_start + N)
    keys = cache.layers[PRUNE_LAYER - 1].keys[0, :, image].transpose(0, 1).reshape(N, -1)  # [N, n_kv_heads * hd]
    kept, fused = reference_select(keys, hidden[0, image], GRID, keep)
    hidden = torch.cat([hidden[:, :image_start], fused[None], hidden[:, image_start + N :]], dim=1)
    seq_len = inputs_embeds.shape[1]
    rows = torch.cat([torch.arange(image_start), image_start + kept, torch.arange(image_start + N, seq_len)])
    hidden = run(text.layers[PRUNE_LAYER:], hidden, position_ids[:, :, rows])
    return model.lm_head(text.norm(hidden)), kept, cache


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("checkpoints") / "tiny-qwen2-vl")


@pytest.fixture(scope="module")
def qwen(qwen_dir) -> Qwen2VLForConditionalGeneration:
    model = Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval().requires_grad_(False)  # as the export pipeline's: ONNX cannot differentiate the scans


@pytest.fixture(scope="module")
def processed(qwen_dir):
    """The processor's output for a random 224 x 224 image and one question."""
    processor = Qwen2VLImageTextProcessor.from_pretrained(qwen_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(images=image, text=text, return_tensors="pt")


@pytest.fixture(scope="module")
def unpruned(qwen) -> Modules:
    return Modules(qwen, keep=N)


@pytest.fixture(scope="module")
def pruned(qwen) -> Modules:
    return Modules(qwen, keep=16)


def test_build_is_idempotent_and_deterministic(qwen_dir, tmp_path):
    weights = qwen_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_qwen2_vl(qwen_dir) == qwen_dir
    assert weights.stat().st_mtime_ns == before
    other = build_tiny_qwen2_vl(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (other / name).read_bytes() == (qwen_dir / name).read_bytes()


def test_processor_applies_the_template_and_keeps_the_grid(qwen_dir, qwen, processed):
    tokenizer = Qwen2VLImageTextProcessor.from_pretrained(qwen_dir).tokenizer
    assert len(tokenizer) == qwen.config.text_config.vocab_size
    ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"])
    assert ids == [1, 2, qwen.config.vision_start_token_id, qwen.config.vision_end_token_id]
    text = tokenizer.decode(processed["input_ids"][0])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * N
        + "<|vision_end|>What is in the image?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert processed["image_grid_thw"].tolist() == [list(PATCH_GRID)]
    assert processed["pixel_values"].shape == (256, 3 * 2 * 14 * 14)


def test_linear_patch_embedding_matches_conv3d(qwen, processed):
    """Exact in float64; in float32 the two summation orders differ by a few ulps of outputs up to ~15."""
    patch_embed = qwen.model.visual.patch_embed
    pixel_values = processed["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(
            PatchEmbedding(patch_embed.proj)(pixel_values), patch_embed(pixel_values), atol=5e-5, rtol=0
        )
        exact = copy.deepcopy(patch_embed).double()
        torch.testing.assert_close(
            PatchEmbedding(exact.proj)(pixel_values.double()), exact(pixel_values.double()), atol=1e-12, rtol=0
        )


def test_vision_encoder_matches_transformers(qwen, unpruned, processed):
    with torch.no_grad():
        expected = qwen.model.get_image_features(processed["pixel_values"], processed["image_grid_thw"])
        got = unpruned.vision_encoder(processed["pixel_values"])
    assert got.shape == (N, qwen.config.text_config.hidden_size)
    torch.testing.assert_close(got, expected.pooler_output[0], atol=ATOL, rtol=0)


def test_vision_encoder_attends_within_each_frame(qwen):
    """Two frames (a video's grid): each attends to itself, as transformers' cu_seqlens make it."""
    pixel_values = torch.randn(2 * 256, 1176, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = qwen.model.visual(pixel_values, grid_thw=torch.tensor([[2, 16, 16]])).pooler_output
        got = Qwen2VLVisionEncoder(qwen, grid=(2, 16, 16))(pixel_values)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("prefix, suffix", [(None, None), (3, 0), (0, 5), (7, 20)])
def test_position_ids_match_get_rope_index(qwen, processed, prefix, suffix):
    """The processor's prompt, and made-up ones: image first, image last, text on both sides."""
    if prefix is None:
        input_ids, types = processed["input_ids"], processed["mm_token_type_ids"]
    else:
        types = torch.tensor([[0] * prefix + [1] * N + [0] * suffix])
        input_ids = torch.where(types == 1, qwen.config.image_token_id, 100)
    image_start = int(types[0].argmax())
    expected, expected_delta = qwen.model.get_rope_index(input_ids, types, image_grid_thw=processed["image_grid_thw"])
    position_ids, delta = mrope_position_ids(input_ids.shape[1], image_start, GRID)
    assert position_ids.dtype == np.int64
    np.testing.assert_array_equal(position_ids, expected.numpy())
    assert delta == int(expected_delta)


def test_image_block_that_does_not_fit_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        mrope_position_ids(70, 10, GRID)


def test_unpruned_prefill_matches_transformers(qwen, unpruned, processed):
    with torch.no_grad():
        expected = qwen(**processed, use_cache=True)
        logits, kept, order, cache = unpruned.prefill(*unpruned.embed(processed["input_ids"], processed["pixel_values"])[:3])
    torch.testing.assert_close(logits, expected.logits[:, -1], atol=ATOL, rtol=0)
    assert torch.equal(kept, torch.arange(N)) and torch.equal(order, kept)
    for (key, value), layer in zip(cache, expected.past_key_values.layers, strict=True):
        torch.testing.assert_close(key, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, layer.values, atol=ATOL, rtol=0)


def test_unpruned_greedy_generation_matches_transformers(qwen, unpruned, processed):
    with torch.no_grad():
        expected = qwen.generate(
            **processed, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    expected_tokens = expected.sequences[0, processed["input_ids"].shape[1] :].tolist()
    tokens, logits = unpruned.generate(processed["input_ids"], processed["pixel_values"], STEPS)
    assert len(expected_tokens) == STEPS  # no early end of sequence: all steps are compared
    assert tokens == expected_tokens
    assert len(set(tokens)) > 4  # the random model does not repeat one token
    for got, want in zip(logits, expected.logits, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_eager_model_runs_the_runtime_loop_like_transformers(qwen, qwen_dir, processed):
    """`runtime.eager.EagerModel`: the family's modules driven by the one generation loop, the
    host side's position ids (`runtime.families.qwen2_vl`) and its decode positions with the rope delta."""
    eager = EagerModel(qwen, Qwen2VLImageTextProcessor.from_pretrained(qwen_dir), get_spec("tiny-qwen2-vl"))
    config = GenerationConfig(max_new_tokens=STEPS, ignore_eos=True, return_logits=True)
    result = eager.generate_ids(processed["input_ids"].numpy(), processed["pixel_values"].numpy(), config)
    with torch.no_grad():
        expected = qwen.generate(
            **processed, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    assert result.token_ids == expected.sequences[0, processed["input_ids"].shape[1] :].tolist()
    for got, want in zip(result.logits, expected.logits, strict=True):
        np.testing.assert_allclose(got, want[0].numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("keep", [16, 4])
def test_pruned_prefill_matches_hand_composition(qwen, processed, keep):
    modules = Modules(qwen, keep=keep)
    embeds, position_ids, image_positions, _ = modules.embed(processed["input_ids"], processed["pixel_values"])
    with torch.no_grad():
        logits, kept, _, cache = modules.prefill(embeds, position_ids, image_positions)
    expected_logits, expected_kept, expected_cache = reference_pruned(
        qwen, embeds, position_ids, int(image_positions[0]), keep
    )
    assert torch.equal(kept, expected_kept)
    assert kept.shape == (keep,) and bool((kept[1:] > kept[:-1]).all())
    torch.testing.assert_close(logits, expected_logits[:, -1], atol=ATOL, rtol=0)
    seq_len = embeds.shape[1]
    for i, ((key, value), layer) in enumerate(zip(cache, expected_cache.layers, strict=True)):
        assert key.shape[2] == (seq_len if i < PRUNE_LAYER else seq_len - N + keep)
        torch.testing.assert_close(key, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(value, layer.values, atol=ATOL, rtol=0)


def test_pruned_decode_matches_recomputation(qwen, pruned, processed):
    """Decode positions continue from T + rope_delta, never renumbered after pruning."""
    embeds, position_ids, image_positions, delta = pruned.embed(processed["input_ids"], processed["pixel_values"])
    image_start = image_positions[0]
    seq_len = embeds.shape[1]
    with torch.no_grad():
        logits, kept, _, cache = pruned.prefill(embeds, position_ids, image_positions)
        for step in range(2):
            token_embeds = pruned.token_embedding(logits.argmax(dim=-1, keepdim=True))  # [1, 1, d]
            position = torch.full((3, 1, 1), seq_len + step + delta)
            logits, cache = pruned.decode_step(token_embeds, position, cache)
            embeds = torch.cat([embeds, token_embeds], dim=1)
            position_ids = torch.cat([position_ids, position], dim=2)
            expected, expected_kept, _ = reference_pruned(qwen, embeds, position_ids, int(image_start), 16)
            assert torch.equal(expected_kept, kept)
            torch.testing.assert_close(logits, expected[:, -1], atol=ATOL, rtol=0)


def test_pruning_changes_the_output(unpruned, pruned, processed):
    inputs = unpruned.embed(processed["input_ids"], processed["pixel_values"])[:3]
    with torch.no_grad():
        full, short = unpruned.prefill(*inputs)[0], pruned.prefill(*inputs)[0]
    assert (full - short).abs().max() > 1e-2


def longer(embeds, position_ids, image_positions):
    """The prefill inputs with three more text tokens at the end: another sequence length."""
    more = torch.cat([position_ids, position_ids[:, :, -3:] + 3], dim=2)
    return torch.cat([embeds, embeds[:, -3:]], dim=1), more, image_positions


@pytest.fixture(scope="module")
def exported(pruned, processed):
    """torch.export of the three graphs (pruned prefill with a dynamic T, decode with dynamic cache lengths)."""
    embeds, position_ids, image_positions, delta = pruned.embed(processed["input_ids"], processed["pixel_values"])
    seq_len = Dim("T", min=N + 1, max=4096)
    with torch.no_grad():
        vision = export(pruned.vision_encoder, (processed["pixel_values"],), strict=False)
        prefill = export(
            pruned.prefill,
            (embeds, position_ids, image_positions),
            dynamic_shapes=({1: seq_len}, {2: seq_len}, None),
            strict=False,
        )
        *_, cache = pruned.prefill(embeds, position_ids, image_positions)
        past, pruned_past = Dim("past", min=N + 1, max=4095), Dim("pruned_past", min=17, max=4095 - N + 16)
        cache_dims = tuple(
            ({2: dim}, {2: dim}) for dim in [past] * PRUNE_LAYER + [pruned_past] * (len(cache) - PRUNE_LAYER)
        )
        step_args = (embeds[:, -1:], torch.full((3, 1, 1), embeds.shape[1] + delta), cache)
        decode = export(pruned.decode_step, step_args, dynamic_shapes=(None, None, cache_dims), strict=False)
    return vision, prefill, decode, (embeds, position_ids, image_positions), step_args


def test_exported_graphs_match_eager(pruned, processed, exported):
    vision, prefill, decode, prefill_args, step_args = exported
    with torch.no_grad():
        torch.testing.assert_close(
            vision.module()(processed["pixel_values"]), pruned.vision_encoder(processed["pixel_values"]), atol=0, rtol=0
        )
        for args in (prefill_args, longer(*prefill_args)):
            expected, got = pruned.prefill(*args), prefill.module()(*args)
            torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
            assert torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
            assert got[3][-1][0].shape[2] == args[0].shape[1] - N + 16

        inputs, position, cache = step_args
        for past in (cache, tuple((k[:, :, :-5], v[:, :, :-5]) for k, v in cache)):
            expected, got = pruned.decode_step(inputs, position, past), decode.module()(inputs, position, past)
            torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
            assert [k.shape[2] for k, _ in got[1]] == [k.shape[2] + 1 for k, _ in past]


def test_onnx_prefill_matches_eager(pruned, exported, tmp_path):
    import onnxruntime as ort

    _, prefill, _, prefill_args, _ = exported
    path = tmp_path / "prefill.onnx"
    torch.onnx.export(prefill, dynamo=True, opset_version=18, optimize=False, verbose=False).save(str(path))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about constant folding
    session = ort.InferenceSession(str(path), options)
    for args in (prefill_args, longer(*prefill_args)):
        feed = {value.name: x.numpy() for value, x in zip(session.get_inputs(), args, strict=True)}
        got = session.run(None, feed)
        with torch.no_grad():
            logits, kept, order, cache = pruned.prefill(*args)
        np.testing.assert_allclose(got[0], logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got[1], kept.numpy())
        np.testing.assert_array_equal(got[2], order.numpy())
        for output, expected in zip(got[3:], [x for pair in cache for x in pair], strict=True):
            np.testing.assert_allclose(output, expected.numpy(), atol=1e-4, rtol=0)


def test_executorch_vision_encoder_matches_eager(pruned, processed, exported):
    """The Conv3d would lower and then fail at run time (no portable kernel); the Linear runs.

    Portable kernels only, the case the Conv3d failed in: lowering to XNNPACK as well takes four
    times longer (it runs too, measured within 4e-6).
    """
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = to_edge_transform_and_lower(exported[0]).to_executorch()
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    got = method.execute([processed["pixel_values"]])[0]
    with torch.no_grad():
        torch.testing.assert_close(got, pruned.vision_encoder(processed["pixel_values"]), atol=1e-5, rtol=0)


def test_grid_mismatch_is_rejected(qwen, processed):
    encoder = Qwen2VLVisionEncoder(qwen, grid=(1, 8, 8))
    with pytest.raises(ValueError, match=r"pixel_values must be \[64, 1176\]"):
        encoder(processed["pixel_values"])
    with pytest.raises(ValueError, match="multiples of 2"):
        Qwen2VLVisionEncoder(qwen, grid=(1, 15, 16))


def test_keep_out_of_range_and_sliding_windows_are_rejected(qwen):
    with pytest.raises(ValueError, match="keep must be an integer in"):
        Qwen2VLPrefill(qwen, grid=GRID, keep=N + 1, prune_layer=PRUNE_LAYER)
    sliding = copy.deepcopy(qwen)
    sliding.model.language_model.config.layer_types = ["full_attention", "sliding_attention"] * 2
    with pytest.raises(ValueError, match="only full-attention decoder layers"):
        Qwen2VLDecodeStep(sliding)
