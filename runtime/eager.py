"""Eager PyTorch behind the runtime's `Session` interface: the reference that parity compares against.

    EagerSession   the family's four modules (`models.families`) on a transformers model, numpy in
                   and out like an exported backend; the KV cache stays torch tensors between steps
    EagerModel     a loaded model with its processor, generating through `runtime.generate.greedy`,
                   the loop every backend runs, so that eager and exported differ in the graphs only

Imports torch and the models: used by parity, the export's parity check and the tests, never by the
ONNX Runtime path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from models import LoadedModel, ModelSpec, load_model
from models.families import prompt_image_tokens
from models.selectors import DEFAULT_METHOD, PrefillSelector, SelectionMethod, VisionSelector, forced_selection, get_method
from runtime.artifact import token_id_set
from runtime.backends.base import Selection
from runtime.families import PromptInputs
from runtime.generate import GenerationConfig, Greedy, InputProcessor, greedy


class EagerSession:
    """The four graphs as eager modules of `model` pruned to `keep` image tokens (None: all N)."""

    backend = "eager"

    def __init__(
        self,
        model: PreTrainedModel,
        spec: ModelSpec,
        *,
        keep: int | None = None,
        method: SelectionMethod | None = None,
    ):
        family = spec.model_family
        self.keep = spec.num_image_tokens if keep is None else keep
        self.vision = family.vision_graph(model, spec, keep=self.keep, method=method).eval()
        self.embedding = family.token_embedding(model).eval()
        self.prefill_module = family.prefill(model, spec, keep=self.keep, method=method).eval()
        self.decode_module = family.decode_step(model).eval()
        weight = self.embedding.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype

    @torch.no_grad()
    def vision_encoder(self, pixel_values: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        output = self.vision(self._float(pixel_values))
        if isinstance(output, torch.Tensor):
            return _numpy(output), None
        image_embeds, kept, order = output  # the vision graph selects (`models.families.SelectedVision`)
        return _numpy(image_embeds), (kept.cpu().numpy(), order.cpu().numpy())

    @torch.no_grad()
    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return _numpy(self.embedding(self._int(input_ids)))

    @torch.no_grad()
    def prefill(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, image_positions: np.ndarray
    ) -> tuple[np.ndarray, Selection, tuple[torch.Tensor, ...]]:
        logits, kept, order, cache = self.prefill_module(
            self._float(inputs_embeds), self._int(position_ids), self._int(image_positions)
        )
        return _numpy(logits), (kept.cpu().numpy(), order.cpu().numpy()), tuple(cache)

    @torch.no_grad()
    def decode(
        self, inputs_embeds: np.ndarray, position_ids: np.ndarray, cache: tuple[torch.Tensor, ...]
    ) -> tuple[np.ndarray, tuple[torch.Tensor, ...]]:
        logits, cache = self.decode_module(self._float(inputs_embeds), self._int(position_ids), cache)
        return _numpy(logits), cache

    @contextmanager
    def selection_forced(self, selection: Selection) -> Iterator[None]:
        """Within the block, the session keeps the image tokens of `selection` (kept ascending, the
        same in selection order) instead of choosing them; the method's fusion still applies.

        Raises:
            ValueError: the session does not select (unpruned), or `selection` is not a selection
                of its keep count.
        """
        holder = next((module for module in (self.vision, self.prefill_module) if _selector(module) is not None), None)
        if holder is None:
            raise ValueError("this session keeps every image token: there is no selection to force")
        kept, order = (self._int(np.asarray(part)) for part in selection)
        if kept.shape != (self.keep,) or order.shape != (self.keep,):
            raise ValueError(f"a forced selection holds {self.keep} tokens, got {kept.shape[0]} and {order.shape[0]}")
        selector = holder.selector
        holder.selector = forced_selection(selector, kept, order)
        try:
            yield
        finally:
            holder.selector = selector

    def _float(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)

    def _int(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(self.device)


@dataclass(frozen=True)
class Generation:
    """Output of `EagerModel.generate`: the answer, the generated ids (EOS included when produced)
    and the image tokens the pruner kept (ascending, and in selection order)."""

    text: str
    token_ids: list[int]
    kept_indices: list[int]
    selection_order: list[int]


class EagerModel:
    """A transformers VLM with VLM-Pruner at decoder layer K, greedy decoding, batch size 1.

    Args:
        model, processor, spec: a loaded model (`models.load_model`), its processor and spec.
        keep: R, image tokens kept; None or N keeps all (the unpruned model).
        method: the selection method (`models.selectors`), VLM-Pruner by default.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        spec: ModelSpec,
        *,
        keep: int | None = None,
        method: SelectionMethod | None = None,
    ):
        self.model, self.processor, self.spec = model, processor, spec
        self.method = method or get_method(DEFAULT_METHOD)
        self.session = EagerSession(model, spec, keep=keep, method=self.method)
        self.keep = self.session.keep
        needs = self.method.min_text_after_image if self.keep < spec.num_image_tokens else 0
        self.inputs = InputProcessor(
            spec.model_family.input_sections(spec, processor),
            min_text_after_image=needs,
            prompt_image_tokens=prompt_image_tokens(spec, self.keep, self.method),
        )
        self.eos_token_ids = token_id_set(model.generation_config.eos_token_id)
        self.max_positions = model.config.text_config.max_position_embeddings

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, **kwargs) -> EagerModel:
        return cls(loaded.model, loaded.processor, loaded.spec, **kwargs)

    @classmethod
    def from_registry(
        cls,
        name: str,
        *,
        keep: int | None = None,
        model_path: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
        method: SelectionMethod | None = None,
    ) -> EagerModel:
        """Load the registered model `name` (see `models.load_model`) and wrap it."""
        return cls.from_loaded(load_model(name, model_path, dtype=dtype), keep=keep, method=method)

    def prepare_inputs(self, image: Image.Image | Sequence[Image.Image], prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """The transformers processor's input_ids int64 [1, T] and pixel values (the family's shape)
        of the templated prompt and the image (a video model: its frames), as the host side brings
        it to the export's geometry (`HostFamily.fit_image`). When the vision graph selects the
        image tokens, the processor's run of N image placeholders is cut to R, the image a stock
        runner would feed."""
        if self.spec.frames is None and not isinstance(image, Image.Image):
            raise ValueError(f"one PIL image per request, got {type(image).__name__}")
        placeholder = self.processor.tokenizer.convert_ids_to_tokens(self.inputs.image_token_id)
        if placeholder in prompt:
            raise ValueError(f"the prompt must not contain {placeholder}: the conversation template places the image")
        text = self.spec.format_prompt(prompt)
        visual = self.inputs.family.fit_image(image)
        input_ids, pixel_values = self.spec.model_family.processor_inputs(self.processor, visual, text, self.spec)
        input_ids = input_ids.astype(np.int64)
        placeholders = np.flatnonzero(input_ids[0] == self.inputs.image_token_id)
        surplus = placeholders[self.inputs.prompt_image_tokens :]
        return np.delete(input_ids, surplus, axis=1), pixel_values.astype(np.float32)

    def generate_ids(self, input_ids: np.ndarray, pixel_values: np.ndarray, config: GenerationConfig) -> Greedy:
        """Greedy decoding from prepared inputs (see `runtime.generate.greedy`)."""
        inputs: PromptInputs = self.inputs.prepare(input_ids, pixel_values)
        if inputs.num_tokens + config.max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt ({inputs.num_tokens} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the "
                f"model's {self.max_positions} positions"
            )
        return greedy(self.session, inputs, config, self.eos_token_ids)

    def generate(self, image: Image.Image, prompt: str, max_new_tokens: int = 32) -> Generation:
        """Answer `prompt` about `image` with greedy decoding."""
        result = self.generate_ids(*self.prepare_inputs(image, prompt), GenerationConfig(max_new_tokens=max_new_tokens))
        text = self.processor.decode(result.token_ids, skip_special_tokens=True)
        return Generation(
            text=text,
            token_ids=result.token_ids,
            kept_indices=result.kept_indices,
            selection_order=result.selection_order,
        )


def _selector(module: torch.nn.Module) -> PrefillSelector | VisionSelector | None:
    """The selector `module` runs, if any."""
    selector = getattr(module, "selector", None)
    return selector if isinstance(selector, (PrefillSelector, VisionSelector)) else None


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
