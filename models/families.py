"""The model-family seam: what one family of VLMs adds to the shared machinery, registered by name.

A family is one file in `models/` (its vision encoder and its position scheme; the language model
side is `models.decoder`'s) and one file of host-side input preparation in `runtime/families/`
(image preprocessing, position ids), both registered under the same name. The registry, checkpoint
loading, export pipeline, manifest, parity, bench and generation loop read what they need from
here and from the manifest.

    spec.family ──get_family──> ModelFamily
        config(spec)                       transformers config, no download
        vision_encoder                     the family's vision tower (forward(pixel_values) -> [N, d])
        vision_graph / token_embedding / prefill / decode_step   the four exported modules, with
                                           the selection where its method runs it
        pixel_values_shape(spec)           the vision graph's input
        synthetic_processor(spec)          processor of a random-weights model
        preprocess_manifest / vision_manifest   what the runtime and the bench need to know
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import import_module
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch import Tensor, nn
from transformers import BaseImageProcessor, GenerationConfig, PretrainedConfig, PreTrainedModel, ProcessorMixin

from models.decoder import DecodeStep, Prefill, TokenEmbedding
from models.registry import ModelSpec
from models.selectors import PREFILL, VISION_ENCODER, SelectionMethod, VisionSelector


class ModelFamily(ABC):
    """One family of VLMs: its transformers classes and exportable modules.

    Class attributes:
        name: the family's name (`ModelSpec.family`, the manifest's `model.family`, the host side's
            `runtime.families` entry).
        model_class, config_class, processor_class: the transformers classes of its checkpoints.
        prefill_class, decode_class: the language model modules (`models.decoder`'s, or the
            family's subclasses with its own position scheme).
    """

    name: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    processor_class: ClassVar[type[ProcessorMixin]]
    prefill_class: ClassVar[type[Prefill]] = Prefill
    decode_class: ClassVar[type[DecodeStep]] = DecodeStep
    # Rows of the position ids: 1 (RoPE) or 3 (M-RoPE).
    position_rows: ClassVar[int] = 1

    @abstractmethod
    def config(self, spec: ModelSpec) -> PretrainedConfig:
        """The transformers config of `spec`'s architecture."""

    @abstractmethod
    def config_mismatches(self, spec: ModelSpec, config: PretrainedConfig) -> list[str]:
        """What a checkpoint's config says differently from the spec, one line each; [] if nothing."""

    @abstractmethod
    def pixel_values_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        """The shape of the vision encoder's float32 input for one image."""

    @abstractmethod
    def vision_encoder(self, model: PreTrainedModel, spec: ModelSpec) -> nn.Module:
        """forward(pixel_values) -> image_embeds [N, d], in the order of the image tokens."""

    def vision_graph(
        self, model: PreTrainedModel, spec: ModelSpec, *, keep: int, method: SelectionMethod | None = None
    ) -> nn.Module:
        """The vision_encoder graph's module: `vision_encoder`, then the selection of R = `keep`
        tokens when `method` runs it there (forward(pixel_values) -> (image_embeds [R, d], kept
        int64 [R], order int64 [R])); the bare encoder otherwise."""
        encoder = self.vision_encoder(model, spec)
        if selection_graph(spec, keep, method) != VISION_ENCODER:
            return encoder
        return SelectedVision(encoder, method.selector(spec.grid, keep))

    def token_embedding(self, model: PreTrainedModel) -> nn.Module:
        return TokenEmbedding(model)

    def prefill(
        self, model: PreTrainedModel, spec: ModelSpec, *, keep: int, method: SelectionMethod | None = None
    ) -> Prefill:
        """The prefill of a model pruned to R = `keep` image tokens by `method` (VLM-Pruner by default).

        When the selection runs in the vision graph, the language model is an unpruned one fed the
        R kept tokens: its image geometry is then one row of R tokens (no selection reads it).
        """
        if selection_graph(spec, keep, method) == VISION_ENCODER:
            return self.prefill_class(model, grid=(1, keep), keep=keep, prune_layer=spec.prune_layer)
        return self.prefill_class(model, grid=spec.grid, keep=keep, prune_layer=spec.prune_layer, method=method)

    def decode_step(self, model: PreTrainedModel) -> DecodeStep:
        return self.decode_class(model)

    def fit_processor(self, processor: ProcessorMixin, spec: ModelSpec) -> ProcessorMixin:
        """A checkpoint's processor set to the export's fixed image geometry (in place); returns it."""
        return processor

    def checkpoint_note(self, spec: ModelSpec) -> str:
        """What a user whose checkpoint is of another class should know (e.g. a conversion); "" if nothing."""
        return ""

    def processor_inputs(
        self, processor: ProcessorMixin, visual: Any, text: str, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int64 [1, T], pixel_values float32) of templated `text` and the visual input,
        as the model's transformers processor makes them."""
        inputs = processor(images=visual, text=text, return_tensors="np")
        return inputs["input_ids"], inputs["pixel_values"]

    @abstractmethod
    def synthetic_processor(self, spec: ModelSpec) -> ProcessorMixin:
        """The processor of a model built with random weights (no checkpoint, no download)."""

    @abstractmethod
    def generation_config(self, spec: ModelSpec) -> GenerationConfig:
        """bos, eos and pad ids of `synthetic_processor`'s tokenizer."""

    @abstractmethod
    def preprocess_manifest(self, processor: ProcessorMixin, spec: ModelSpec) -> dict[str, Any]:
        """The manifest's `preprocess` section: what the host side needs to make pixel_values."""

    def input_sections(self, spec: ModelSpec, processor: ProcessorMixin) -> dict[str, Any]:
        """The manifest sections the host side reads (`runtime.families`, `runtime.generate.InputProcessor`)."""
        return {
            "model": {"family": self.name},
            "geometry": {
                "num_image_tokens": spec.num_image_tokens,
                "grid": list(spec.grid),
                "image_size": spec.image_size,
                "pixel_values_shape": list(self.pixel_values_shape(spec)),
                "position_rows": self.position_rows,
            },
            "text": {"image_token_id": spec.image_token_id},
            "prompt_template": spec.prompt_template,
            "preprocess": self.preprocess_manifest(processor, spec),
        }

    @abstractmethod
    def vision_manifest(self, model: PreTrainedModel, spec: ModelSpec) -> dict[str, Any]:
        """The manifest's `vision` section: the tower's sizes and `flops`, the vision encoder's
        matmul FLOPs for one image (`runtime.flops`)."""


def describe_mismatches(checks: Iterable[tuple[str, Any, Any]]) -> list[str]:
    """`config_mismatches`' lines: one per (label, checkpoint's value, spec's value) that differ."""
    return [f"{label}: checkpoint {found!r}, spec {want!r}" for label, found, want in checks if found != want]


def pixel_normalization(image_processor: BaseImageProcessor) -> dict[str, Any]:
    """The manifest's resample, rescale and normalization entries of a transformers image processor."""
    return {
        "resample": Image.Resampling(image_processor.resample).name.lower(),
        "rescale_factor": image_processor.rescale_factor,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
    }


class SelectedVision(nn.Module):
    """A vision encoder followed by a selection of its output tokens (DivPrune).

    forward(pixel_values) -> (image_embeds [R, d], kept int64 [R] ascending: which of the encoder's
    N tokens they are, order int64 [R]: kept in selection order).
    """

    def __init__(self, encoder: nn.Module, selector: VisionSelector):
        super().__init__()
        self.encoder = encoder
        self.selector = selector

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embeds = self.encoder(pixel_values)  # [N, d]
        kept, order = self.selector(embeds)
        return embeds.index_select(0, kept), kept, order


def selection_graph(spec: ModelSpec, keep: int, method: SelectionMethod | None) -> str:
    """The graph where a model pruned to `keep` image tokens by `method` (None: the default) selects
    them: the method's, `PREFILL` when nothing is pruned."""
    return method.selection_graph if method is not None and keep < spec.num_image_tokens else PREFILL


def prompt_image_tokens(spec: ModelSpec, keep: int, method: SelectionMethod | None) -> int:
    """Image tokens the language model is fed: R when the selection runs in the vision graph, else N."""
    return keep if selection_graph(spec, keep, method) == VISION_ENCODER else spec.num_image_tokens


# name -> family, filled by `register` as the family modules are imported (`get_family`).
FAMILIES: dict[str, ModelFamily] = {}
# The modules that define the families: a new family is one more module here.
FAMILY_MODULES = ("models.llava", "models.llava_next", "models.qwen2_vl", "models.llava_video")


def register(family: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make `family` known under its name."""
    FAMILIES[family.name] = family()
    return family


def get_family(name: str) -> ModelFamily:
    """The family registered under `name`."""
    for module in FAMILY_MODULES:
        import_module(module)
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; families: {', '.join(sorted(FAMILIES))}") from None
