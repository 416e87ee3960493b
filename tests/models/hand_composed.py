"""The pruned LLaVA-style model (one row of RoPE positions) composed by hand from transformers' parts,
the reference the exportable modules are held to (tests/models/test_llava*.py)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from pruning_graph import reference_select
from pruning_graph.validation import check_grid_and_keep


@torch.no_grad()
def reference_pruned_logits(model, inputs_embeds, image_start, *, grid, keep, prune_layer, select=None):
    """The pruned model composed by hand: transformers' decoder layers called one by one with
    transformers' own cache, a reference selection, and Python slicing of the sequence.

    `select(image_keys [N, dk], image_states [N, d], keep)` -> (kept [R], their states [R, d]);
    default `reference_select` on the grid (one view or several).

    Returns (logits [1, T', vocab] of every remaining position, kept int64 [R], DynamicCache).
    """
    text = model.model.language_model
    n = sum(height * width for height, width in check_grid_and_keep(grid, keep))
    seq_len = inputs_embeds.shape[1]
    positions = torch.arange(seq_len)[None]
    cache = DynamicCache(config=text.config)
    hidden = inputs_embeds
    for layer in text.layers[:prune_layer]:
        embeddings = text.rotary_emb(hidden, positions)
        hidden = layer(
            hidden, position_embeddings=embeddings, position_ids=positions, past_key_values=cache, use_cache=True
        )

    image = slice(image_start, image_start + n)
    keys = cache.layers[prune_layer - 1].keys[0, :, image]  # [n_kv_heads, N, head_dim]
    keys = keys.transpose(0, 1).reshape(n, -1)
    if select is None:
        kept, fused = reference_select(keys, hidden[0, image], grid, keep)
    else:
        kept, fused = select(keys, hidden[0, image], keep)
    hidden = torch.cat([hidden[:, :image_start], fused[None], hidden[:, image_start + n :]], dim=1)
    positions = torch.cat(
        [torch.arange(image_start), image_start + kept, torch.arange(image_start + n, seq_len)]
    )[None]
    for layer in text.layers[prune_layer:]:
        embeddings = text.rotary_emb(hidden, positions)
        hidden = layer(
            hidden, position_embeddings=embeddings, position_ids=positions, past_key_values=cache, use_cache=True
        )
    return model.lm_head(text.norm(hidden)), kept, cache
