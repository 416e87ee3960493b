"""What one export run produces: the typed, validated configuration of `python -m export`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.options import DEFAULT_MAX_SEQ_LEN, DEFAULT_MODEL, DEFAULT_RATE, DEFAULT_TEXT_ROOM, Backend
from models import ModelSpec, get_spec
from models.quantize import VISION_QUANTIZATIONS, Quantization
from models.selectors import DEFAULT_METHOD, SelectionMethod, get_method
from runtime.contract import ONNX_PROFILES

__all__ = ["DEFAULT_MAX_SEQ_LEN", "DEFAULT_MODEL", "DEFAULT_RATE", "Backend", "ExportConfig"]


@dataclass(frozen=True)
class ExportConfig:
    """One model at one keep count, exported to one or more backends.

    Attributes:
        model: registry name (`models.MODEL_SPECS`).
        keep: R, image tokens kept, 1 <= R <= N; R = N exports the unpruned baseline.
        rate: pruning rate r in [0, 1), R = round(N * (1 - r)); give `keep` or `rate`, not both.
            With neither, `DEFAULT_RATE`.
        backends: one or more of `Backend` (strings are accepted and converted); default every
            backend that takes the configuration (ExecuTorch alone with an int8 vision tower).
        model_path: checkpoint folder; default as `models.resolve_checkpoint` looks it up.
        output_dir: the artifact goes to `output_dir/<model>/keep<R>/` (see `artifact_dir`).
        max_seq_len: M, the longest sequence (prompt + generated tokens) the graphs accept;
            default `DEFAULT_MAX_SEQ_LEN`, or N + `DEFAULT_TEXT_ROOM` rounded up to 256 where that is
            more (LLaVA-NeXT: 4096), at most the model's position limit.
        image_size: S, the side of the square image the graphs take (`ModelSpec.with_image_size`);
            default the model's. Only models whose vision tower takes several sizes accept another.
        frames: F, the video frames one prompt takes (`ModelSpec.with_frames`); video models only,
            default the model's (16 for llava-video-7b).
        method: the selection method (`models.selectors`): a name (its default settings) or a
            configured `SelectionMethod`.
        quantization: weight format of the language model's linears (`models.quantize.Quantization`
            or its value); default the model's (`ModelSpec.quantization`).
        vision_quantization: weight format of the vision tower's layers, "none" (float32, the
            default) or "int8" (8da8w per output channel, `models.quantize.VISION_QUANTIZATIONS`):
            ExecuTorch only, whose XNNPACK runs it in int8 (1.7x faster CLIP ViT-L here); the ONNX
            graphs have no per-channel int8 linear (MatMulNBits takes power-of-two blocks only,
            which SigLIP's and Qwen2-VL's widths are not).
        random_weights: export the architecture with random weights (drawn from `seed`) instead
            of a checkpoint, for speed and memory work where the weights are not at hand.
        seed: seed of the random weights.
        onnx_profile: how ONNX Runtime computes the quantized linears (`runtime.contract.ONNX_PROFILES`):
            "exact" (float32, the default) or "fast" (int8 activations; quantized weights and the
            onnx backend only).
        layers_per_method: at most this many decoder layers in one .pte method (the layers from
            the pruning layer on in groups, `export.graphs.build_pte_graphs`); default from the
            lowering's memory (`export.memory.lowering_layers_per_method`), which leaves small
            models in one method each side of the pruning layer.
    Raises:
        ValueError: unknown model or method, keep and rate both given, either out of range, no or unknown
            or repeated backends, max_seq_len out of range, unknown quantization, an image size the
            model does not take, an unknown ONNX profile or "fast" without quantized weights or ONNX,
            an unknown vision quantization or an int8 one with the onnx backend, layers_per_method below 1.
    """

    model: str = DEFAULT_MODEL
    keep: int | None = None
    rate: float | None = None
    backends: tuple[Backend, ...] | None = None
    model_path: Path | None = None
    output_dir: Path = Path("artifacts")
    max_seq_len: int | None = None
    image_size: int | None = None
    frames: int | None = None
    method: SelectionMethod | str = DEFAULT_METHOD
    quantization: Quantization | str | None = None
    vision_quantization: Quantization | str = Quantization.NONE
    random_weights: bool = False
    seed: int = 0
    onnx_profile: str = ONNX_PROFILES[0]
    layers_per_method: int | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        try:
            quantization = Quantization(spec.quantization if self.quantization is None else self.quantization)
        except ValueError:
            choices = ", ".join(q.value for q in Quantization)
            raise ValueError(f"unknown quantization {self.quantization!r}; choose from {choices}") from None
        object.__setattr__(self, "quantization", quantization)
        choices = ", ".join(q.value for q in VISION_QUANTIZATIONS)
        try:
            vision = Quantization(self.vision_quantization)
        except ValueError:
            vision = None
        if vision not in VISION_QUANTIZATIONS:
            raise ValueError(f"unknown vision quantization {self.vision_quantization!r}; choose from {choices}")
        object.__setattr__(self, "vision_quantization", vision)
        if isinstance(self.method, str):
            object.__setattr__(self, "method", get_method(self.method))
        elif not isinstance(self.method, SelectionMethod):
            raise ValueError(f"method must be a method name or a SelectionMethod, got {self.method!r}")
        if self.random_weights and self.model_path is not None:
            raise ValueError("give a checkpoint (model_path) or random weights, not both")
        n = spec.num_image_tokens
        if self.keep is not None and self.rate is not None:
            raise ValueError(f"give keep or rate, not both (keep={self.keep}, rate={self.rate})")
        if self.keep is not None and (
            isinstance(self.keep, bool) or not isinstance(self.keep, int) or not 1 <= self.keep <= n
        ):
            raise ValueError(f"keep must be an integer in [1, N] = [1, {n}] for {self.model}, got {self.keep!r}")
        if self.rate is not None and (
            isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 <= self.rate < 1.0
        ):
            raise ValueError(f"rate must be a number in [0, 1), got {self.rate!r}")

        backends = self.backends
        if backends is None:
            backends = (Backend.EXECUTORCH,) if vision is not Quantization.NONE else (Backend.ONNX, Backend.EXECUTORCH)
        if isinstance(backends, (str, Backend)):
            backends = (backends,)
        try:
            backends = tuple(Backend(backend) for backend in backends)
        except ValueError:
            choices = ", ".join(backend.value for backend in Backend)
            raise ValueError(f"unknown backend in {list(self.backends)}; choose from {choices}") from None
        if not backends:
            raise ValueError("at least one backend is needed")
        if len(set(backends)) != len(backends):
            raise ValueError(f"backends repeated: {[backend.value for backend in backends]}")
        object.__setattr__(self, "backends", backends)
        if self.onnx_profile not in ONNX_PROFILES:
            raise ValueError(f"unknown ONNX profile {self.onnx_profile!r}; choose from {', '.join(ONNX_PROFILES)}")
        if self.onnx_profile != ONNX_PROFILES[0] and (quantization is Quantization.NONE or Backend.ONNX not in backends):
            raise ValueError(
                f"the {self.onnx_profile} ONNX profile changes how ONNX Runtime computes quantized linears: "
                "it needs quantized weights (--quantize int4 or int8) and the onnx backend"
            )
        if vision is not Quantization.NONE and Backend.ONNX in backends:
            raise ValueError(
                f"an {vision.value} vision tower is ExecuTorch's (XNNPACK's per-channel int8 linears); the ONNX graphs "
                "have none: export it with the executorch backend alone"
            )
        if self.layers_per_method is not None and (
            isinstance(self.layers_per_method, bool) or not isinstance(self.layers_per_method, int) or self.layers_per_method < 1
        ):
            raise ValueError(f"layers_per_method must be a positive integer, got {self.layers_per_method!r}")
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.model_path is not None:
            object.__setattr__(self, "model_path", Path(self.model_path))

        limit = spec.text.max_position_embeddings
        if self.max_seq_len is not None:
            # Room for the image, some text and at least one generated token.
            shortest = n + 64
            if isinstance(self.max_seq_len, bool) or not isinstance(self.max_seq_len, int):
                raise ValueError(f"max_seq_len must be an integer, got {self.max_seq_len!r}")
            if not shortest <= self.max_seq_len <= limit:
                raise ValueError(
                    f"max_seq_len must be in [{shortest}, {limit}] for {self.model} "
                    f"(N = {n} image tokens, {limit} positions), got {self.max_seq_len}"
                )

    @property
    def spec(self) -> ModelSpec:
        """The model's spec at the export's image size and number of frames."""
        spec = get_spec(self.model)
        spec = spec if self.image_size is None else spec.with_image_size(self.image_size)
        return spec if self.frames is None else spec.with_frames(self.frames)

    @property
    def keep_count(self) -> int:
        """R, resolved from keep, rate or the default rate."""
        if self.keep is not None:
            return self.keep
        return self.spec.keep_for_rate(DEFAULT_RATE if self.rate is None else self.rate)

    @property
    def pruning_rate(self) -> float:
        """The effective rate 1 - R / N."""
        return 1.0 - self.keep_count / self.spec.num_image_tokens

    @property
    def seq_len_limit(self) -> int:
        """M, max_seq_len resolved."""
        if self.max_seq_len is not None:
            return self.max_seq_len
        room = -(-(self.spec.num_image_tokens + DEFAULT_TEXT_ROOM) // 256) * 256
        return min(max(DEFAULT_MAX_SEQ_LEN, room), self.spec.text.max_position_embeddings)

    @property
    def artifact_dir(self) -> Path:
        """`output_dir/<model>/keep<R>`, with `-<method>` appended when the method is not the default,
        `-<S>px` when the image size is not the model's default, `-<F>f` when the frames are not,
        `-<quantization>` when the quantization is not, `-vision-<quantization>` when the vision
        tower is quantized, and `-<profile>` when the ONNX profile is not the default."""
        spec = self.spec
        default = get_spec(self.model)
        size = "" if spec.image_size == default.image_size else f"-{spec.image_size}px"
        size += "" if spec.frames == default.frames else f"-{spec.frames}f"
        quantization = "" if self.quantization.value == spec.quantization else f"-{self.quantization.value}"
        quantization += "" if self.vision_quantization is Quantization.NONE else f"-vision-{self.vision_quantization.value}"
        method = "" if self.method.name == DEFAULT_METHOD else f"-{self.method.name}"
        profile = "" if self.onnx_profile == ONNX_PROFILES[0] else f"-{self.onnx_profile}"
        return self.output_dir / self.model / f"keep{self.keep_count}{method}{size}{quantization}{profile}"

    def wants(self, backend: Backend) -> bool:
        return backend in self.backends
