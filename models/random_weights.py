"""Registered architectures at their real size with random weights, for speed and export work."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from models.registry import ModelSpec, get_spec


def build_random_model(
    name: str | ModelSpec, *, materialize: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Build the architecture registered as `name` from its spec, without any download.

    The model is first made on the meta device (no memory for the weights). With `materialize`,
    it then gets real CPU storage and transformers' initialisation drawn from `seed`; the global
    RNG state is left as it was. The same (name, seed, dtype) always gives the same weights.

    Args:
        name: registry name, e.g. "llava-1.5-7b", or a spec (`ModelSpec.with_text_layers`).
        materialize: False keeps every weight on the meta device (shapes and dtypes only, enough
            to trace or count parameters); True allocates and initialises them on the CPU.
        seed: RNG seed of the initialisation.
        dtype: floating dtype of the weights.
    Returns:
        The model in eval mode.
    """
    spec = get_spec(name) if isinstance(name, str) else name
    with torch.device("meta"):
        model = spec.model_family.model_class(spec.hf_config())
    model = model.to(dtype)
    if materialize:
        model.to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Also recomputes the buffers that `to_empty` left uninitialised (rotary frequencies,
            # CLIP position ids).
            model.initialize_weights()
    return model.eval()
