"""The in-place-cache text methods (`models.stateful`) against the explicit-cache Prefill and
DecodeStep (`models.decoder`), in eager PyTorch: same logits, same selection, prompt then decode
steps, unpruned and pruned by each prefill method, RoPE (tiny-llava) and M-RoPE (tiny-qwen2-vl)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models import build_tiny_qwen2_vl, get_spec, load_model
from models.selectors import get_method
from models.stateful import SelectTokens, TextDecoder, TextDecoderHead, TextDecoderTail

ATOL = 1e-5
TEXT_BEFORE, TEXT_AFTER, STEPS, MAX_SEQ_LEN = 5, 19, 3, 1024


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    qwen = load_model("tiny-qwen2-vl", build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen2-vl"))
    return {"tiny-llava": tiny, "tiny-qwen2-vl": qwen}


def _positions(rows: int, start: int, length: int) -> Tensor:
    """Position ids [rows, 1, length]; M-RoPE rows that differ, as an image's do."""
    base = torch.arange(start, start + length)
    return torch.stack([base + row * (base % 3) for row in range(rows)])[:, None]


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
@pytest.mark.parametrize("method", [None, "vlm-pruner", "fastv", "dart"])
@torch.no_grad()
def test_in_place_cache_equals_the_explicit_cache(models, name, method):
    loaded = models[name]
    model, spec = loaded.model, get_spec(name)
    family, n = spec.model_family, spec.num_image_tokens
    keep = n if method is None else n // 9
    selection = None if method is None else get_method(method)
    rows, length = family.position_rows, TEXT_BEFORE + n + TEXT_AFTER
    hidden_size = model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, length, hidden_size, generator=generator)
    steps = [torch.randn(1, 1, hidden_size, generator=generator) for _ in range(STEPS)]
    positions = _positions(rows, 0, length)
    image_positions = torch.arange(TEXT_BEFORE, TEXT_BEFORE + n)

    logits, kept, order, cache = family.prefill(model, spec, keep=keep, method=selection)(embeds, positions, image_positions)
    decode = family.decode_step(model)
    expected = [logits]
    for s, step in enumerate(steps):
        logits, cache = decode(step, _positions(rows, length + s, 1), cache)
        expected.append(logits)

    got = []
    if method is None:
        decoder = TextDecoder(model, max_seq_len=MAX_SEQ_LEN)
        extra = (lambda p: (p,)) if rows > 1 else (lambda p: ())
        got.append(decoder(embeds, torch.tensor([0]), *extra(positions)))
        for s, step in enumerate(steps):
            got.append(decoder(step, torch.tensor([length + s]), *extra(_positions(rows, length + s, 1))))
    else:
        k = spec.prune_layer
        head = TextDecoderHead(model, prune_layer=k, max_seq_len=MAX_SEQ_LEN)
        select = SelectTokens(model, selection.selector(spec.grid, keep), keep=keep, prune_layer=k)
        tail = TextDecoderTail(model, layers=range(k, model.config.text_config.num_hidden_layers), capacity=MAX_SEQ_LEN - (n - keep))
        short, short_positions, got_kept, got_order = select(*head(embeds, positions, torch.tensor([0])), positions, image_positions)
        assert got_kept.tolist() == kept.tolist() and got_order.tolist() == order.tolist()
        got.append(tail(short, short_positions, torch.tensor([0])))
        pruned_length = short.shape[1]
        assert pruned_length == length - n + keep
        for s, step in enumerate(steps):
            p = _positions(rows, length + s, 1)
            hidden, _, _ = head(step, p, torch.tensor([length + s]))
            got.append(tail(hidden, p, torch.tensor([pruned_length + s])))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)
