"""The selector seam: where a selection runs, what it is handed, and what a selection method is.

    in the prefill (most methods):
        layers 0..K-1 ──> LayerOutputs ──PrefillSelector──> kept [R], their states [R, d], order [R]
    in the vision encoder graph (DivPrune):
        vision encoder ──> image_embeds [N, d] ──VisionSelector──> kept [R], order [R]
        (the language model then is an unpruned one fed the R kept tokens)

`kept` is ascending; `order` holds the same tokens in the order the method chose them (what
`runtime.show` numbers).

A method is one file in this package: a frozen dataclass (its settings) that builds the
selector module for one geometry and keep count, registered by name (`register`). The models
run whichever selector they are given where its method says (`SelectionMethod.selection_graph`)
and never branch on the method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, repeat_kv

from pruning_graph.validation import Grid


@dataclass(frozen=True)
class LayerOutputs:
    """What layer K-1 produced, for a selector at the input of layer K. Batch of one.

    The accessors are computed when a selector calls them, so a traced graph holds only what its
    selector reads.

    Attributes:
        hidden: [1, T, d], the layer's output.
        keys: [1, n_kv_heads, T, head_dim], its post-RoPE keys.
        last_query: [1, n_heads, 1, head_dim], the last token's post-RoPE query in the layer.
        scaling: the layer's attention scale.
        final_norm: the model's final norm.
        image_positions: int64 [N], the sequence positions of the image tokens.
    """

    hidden: Tensor
    keys: Tensor
    last_query: Tensor
    scaling: float
    final_norm: nn.Module
    image_positions: Tensor

    @classmethod
    def of_layer(
        cls, layer: LlamaDecoderLayer, hidden: Tensor, keys: Tensor, query: Tensor, final_norm: nn.Module, image_positions: Tensor
    ) -> LayerOutputs:
        """From `models.decoder.decoder_layer`'s results: keys [1, n_kv_heads, T, hd], query [1, T, n_heads, hd]."""
        last_query = query[:, -1:].transpose(1, 2)
        return cls(hidden, keys, last_query, layer.self_attn.scaling, final_norm, image_positions)

    @property
    def num_image_tokens(self) -> int:
        return self.image_positions.shape[0]

    def token_keys(self) -> Tensor:
        """Un-repeated KV heads concatenated per token: [T, n_kv_heads * head_dim]."""
        return self.keys[0].transpose(0, 1).reshape(self.keys.shape[2], -1)

    def image_keys(self) -> Tensor:
        """[N, n_kv_heads * head_dim]."""
        n = self.num_image_tokens
        return self.keys[0].index_select(1, self.image_positions).transpose(0, 1).reshape(n, -1)

    def image_states(self) -> Tensor:
        """The image tokens' output states: [N, d]."""
        return self.hidden[0].index_select(0, self.image_positions)

    def normed_states(self) -> Tensor:
        """Every token's output state through the final norm: [T, d]."""
        return self.final_norm(self.hidden)[0]

    def after_image(self) -> Tensor:
        """bool [T]: the tokens after the last image token."""
        positions = torch.arange(self.hidden.shape[1], device=self.hidden.device)
        return (positions[:, None] > self.image_positions[None, :]).all(dim=1)

    def last_token_attention(self) -> Tensor:
        """The last token's attention probabilities to the image tokens in this layer, one row per
        query head, the softmax over its whole causal row (all T keys): float32 [heads, N]."""
        heads = self.last_query.shape[1]
        keys = repeat_kv(self.keys, heads // self.keys.shape[1])  # [1, heads, T, head_dim]
        scores = (self.last_query.float() @ keys.float().transpose(2, 3))[0, :, 0] * self.scaling  # [heads, T]
        return scores.softmax(dim=-1).index_select(1, self.image_positions)


class PrefillSelector(nn.Module, ABC):
    """Chooses R of the N image tokens at the input of layer K.

    forward(outputs: LayerOutputs) -> (kept int64 [R] ascending, states [R, d]: the kept tokens'
    states as they enter layer K, fused or unchanged, order int64 [R]: kept in selection order).
    """

    @abstractmethod
    def forward(self, outputs: LayerOutputs) -> tuple[Tensor, Tensor, Tensor]: ...

    def states_for(self, outputs: LayerOutputs, kept: Tensor) -> Tensor:
        """The states [R, d] this method gives the tokens `kept` (int64 [R], ascending) when they
        are the ones kept, whoever chose them: unchanged by default (`kept_states`)."""
        return kept_states(outputs, kept)


class VisionSelector(nn.Module, ABC):
    """Chooses R of the N image tokens from the vision encoder's output, before the language model.

    forward(image_embeds [N, d]) -> (kept int64 [R] ascending, order int64 [R]: kept in selection order).
    """

    @abstractmethod
    def forward(self, image_embeds: Tensor) -> tuple[Tensor, Tensor]: ...


class ForcedPrefillSelection(PrefillSelector):
    """Keeps given tokens instead of choosing them; their states are what `selector` gives them
    (a method's fusion included). Eager only: `runtime.parity` compares a backend that kept other
    tokens with eager on that backend's tokens."""

    def __init__(self, selector: PrefillSelector, kept: Tensor, order: Tensor):
        super().__init__()
        self.selector, self.kept, self.order = selector, kept, order

    def forward(self, outputs: LayerOutputs) -> tuple[Tensor, Tensor, Tensor]:
        return self.kept, self.selector.states_for(outputs, self.kept), self.order


class ForcedVisionSelection(VisionSelector):
    """`ForcedPrefillSelection` for a selection on the vision encoder's output."""

    def __init__(self, kept: Tensor, order: Tensor):
        super().__init__()
        self.kept, self.order = kept, order

    def forward(self, image_embeds: Tensor) -> tuple[Tensor, Tensor]:
        return self.kept, self.order


def forced_selection(selector: PrefillSelector | VisionSelector, kept: Tensor, order: Tensor) -> nn.Module:
    """`selector` made to keep `kept` (int64 [R], ascending), chosen in `order` (int64 [R])."""
    if sorted(order.tolist()) != kept.tolist() or kept.unique().numel() != kept.numel():
        raise ValueError("order must hold the kept tokens, each once, and kept must be ascending")
    if isinstance(selector, VisionSelector):
        return ForcedVisionSelection(kept, order)
    return ForcedPrefillSelection(selector, kept, order)


# The graphs a selection can run in (the artifact contract's names, `runtime.contract.GRAPH_NAMES`).
PREFILL = "prefill"
VISION_ENCODER = "vision_encoder"


@dataclass(frozen=True)
class SelectionMethod(ABC):
    """A token-selection method and its settings (the dataclass fields).

    Class attributes:
        name: the method's name (`--method`, the manifest's `pruning.method`).
        question_dependent: whether the selection reads the text after the image.
        min_text_after_image: text tokens the prompt must hold after the image (the runtime checks).
        selection_graph: where the selection runs: `PREFILL` (at the input of layer K, a
            `PrefillSelector`) or `VISION_ENCODER` (on the vision encoder's output, a
            `VisionSelector`; the prompt then holds only the R kept image tokens).
        loops: whether the selection runs loops (`scan`): the export checks that its graph holds
            them and that no other graph does.
    """

    name: ClassVar[str]
    question_dependent: ClassVar[bool] = False
    min_text_after_image: ClassVar[int] = 0
    selection_graph: ClassVar[str] = PREFILL
    loops: ClassVar[bool] = False

    @abstractmethod
    def selector(self, grid: Grid, keep: int) -> PrefillSelector | VisionSelector:
        """The selector of R = `keep` tokens out of the `grid`'s N, 1 <= R < N, of the kind
        `selection_graph` runs."""

    def settings(self) -> dict[str, Any]:
        """The manifest's `pruning.config`: the fields, JSON-ready."""
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SelectionMethod:
        """The method of a manifest's `pruning.config` (`settings`' inverse)."""
        return cls(**settings)


# name -> method class, filled by `register` as the method modules are imported (`get_method`).
METHODS: dict[str, type[SelectionMethod]] = {}


def register(method: type[SelectionMethod]) -> type[SelectionMethod]:
    """Class decorator: make `method` known under its name."""
    METHODS[method.name] = method
    return method


def kept_states(outputs: LayerOutputs, kept: Tensor) -> Tensor:
    """The kept image tokens' states, unchanged (no fusion): int64 [R] -> [R, d]."""
    return outputs.hidden[0].index_select(0, outputs.image_positions.index_select(0, kept))
