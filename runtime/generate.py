"""Greedy generation: the one loop that drives every session, exported (ONNX Runtime, ExecuTorch) or eager.

    image ──family preprocess──> pixel_values ──vision_encoder──> image_embeds [N, d] ──┐
    prompt ──template + tokenizer──> input_ids ──embed_tokens──> [1, T, d] ─────────────┴─ splice at
        image_positions ──prefill (prunes N -> R; position_ids [rows, 1, T])──> logits, kept, cache
        ──argmax──> first token ──decode at T + rope_delta, T + 1 + rope_delta, ...──> one token per
        step until EOS or max_new_tokens

A method that selects in the vision graph (DivPrune) prunes there instead: vision_encoder returns
the R kept tokens' embeddings and indices, the prompt holds R placeholders, and the prefill prunes
nothing. The family's host side (`runtime.families`) makes the pixel values and position ids;
numpy between the steps, no torch on the ONNX Runtime path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from runtime.artifact import Artifact, load_artifact
from runtime.backends import Session, open_session
from runtime.contract import TOKENIZER_FILE
from runtime.families import HostFamily, PromptInputs, host_family
from runtime.tokenizer import PromptTokenizer, find_image_positions


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """Greedy decoding settings.

    Attributes:
        max_new_tokens: stop after this many generated tokens (the first one included).
        ignore_eos: keep decoding past an end-of-sequence token (fixed-length runs: parity, bench).
        return_logits: keep the logits of the prefill and of every decode step in the result.
    """

    max_new_tokens: int = 32
    ignore_eos: bool = False
    return_logits: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")


@dataclass(frozen=True, kw_only=True)
class Stats:
    """Timings of one `generate` call, in milliseconds.

    Attributes:
        preprocess_ms: image loading and preprocessing, prompt tokenization.
        vision_ms: the vision encoder.
        embed_ms: prompt token embedding and the splice of the image embeddings.
        prefill_ms: the prefill graph (pruning included).
        time_to_first_token_ms: from the call to the first generated token (everything above).
        decode_ms: all decode steps.
        num_prompt_tokens: T, image tokens included.
        num_generated_tokens: generated tokens; the first comes from the prefill, the others
            from one decode step each.
    """

    preprocess_ms: float
    vision_ms: float
    embed_ms: float
    prefill_ms: float
    time_to_first_token_ms: float
    decode_ms: float
    num_prompt_tokens: int
    num_generated_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second; NaN when no decode step ran."""
        steps = self.num_generated_tokens - 1
        return steps / (self.decode_ms / 1000.0) if steps > 0 and self.decode_ms > 0 else float("nan")


@dataclass(frozen=True)
class GenerationResult:
    """Output of `Runner.generate`.

    Attributes:
        text: the decoded answer, special tokens removed.
        token_ids: the generated ids, the end-of-sequence token included when it was produced.
        kept_indices: the image tokens the pruner kept, ascending indices into the image's N tokens
            (in the order of the manifest's `geometry.grid`).
        selection_order: the same tokens in the order the method chose them (`runtime.show`).
        stats: timings.
        logits: with `return_logits`, float32 [V] of the prefill and of each decode step, one
            per generated token; else None.
    """

    text: str
    token_ids: list[int]
    kept_indices: list[int]
    selection_order: list[int]
    stats: Stats
    logits: list[np.ndarray] | None = None


class InputProcessor:
    """Image and prompt -> `PromptInputs`, as the model's processor makes them; needs no session.

    Args:
        manifest: an artifact's manifest (or the same sections of an eager model, `runtime.eager`):
            `model.family`, `geometry`, `preprocess`, `text.image_token_id`, `prompt_template`.
        tokenizer_file: the processor's tokenizer.json; None when only prepared ids are given (`prepare`).
        min_text_after_image: prompt tokens the selection needs after the image (`Artifact.min_text_after_image`).
        prompt_image_tokens: placeholders of the image in the prompt (`Artifact.prompt_image_tokens`:
            R when the vision graph selects the image tokens); None: all N.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        tokenizer_file: str | os.PathLike | None = None,
        *,
        min_text_after_image: int = 0,
        prompt_image_tokens: int | None = None,
    ):
        self.family: HostFamily = host_family(manifest)
        self.min_text_after_image = min_text_after_image
        self.prompt_image_tokens = self.family.num_image_tokens if prompt_image_tokens is None else prompt_image_tokens
        self.image_token_id: int = manifest["text"]["image_token_id"]
        self.tokenizer = None
        if tokenizer_file is not None:
            self.tokenizer = PromptTokenizer(
                tokenizer_file,
                prompt_template=manifest["prompt_template"],
                image_token_id=self.image_token_id,
                num_image_tokens=self.prompt_image_tokens,
            )

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> InputProcessor:
        return cls(
            artifact.manifest,
            artifact.path(TOKENIZER_FILE),
            min_text_after_image=artifact.min_text_after_image,
            prompt_image_tokens=artifact.prompt_image_tokens,
        )

    def __call__(
        self, image: str | os.PathLike | Image.Image, prompt: str, *, on_note: Callable[[str], None] | None = None
    ) -> PromptInputs:
        """Tokenize the templated prompt, preprocess the image.

        `on_note` receives what the user should know about the input (e.g. an animated image of
        which only the first frame is used, an image stretched to the export's size).

        Raises:
            FileNotFoundError / ValueError: an image path that does not exist or cannot be read,
                an empty prompt, or one holding the image token.
        """
        if self.tokenizer is None:
            raise ValueError("this InputProcessor has no tokenizer: give prepared input_ids to `prepare`")
        input_ids = self.tokenizer.encode(prompt)
        pixel_values = self.family.preprocess(self.family.load(image, on_note=on_note), on_note=on_note)
        return self.prepare(input_ids, pixel_values)

    def prepare(self, input_ids: np.ndarray, pixel_values: np.ndarray) -> PromptInputs:
        """`PromptInputs` of prepared input_ids int64 [1, T] (with the image's placeholders) and pixel values.

        Raises:
            ValueError: not one image's worth of placeholders, pixel values of another shape, fewer
                tokens after the image than the selection needs.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        pixel_values = np.asarray(pixel_values, dtype=np.float32)
        image_positions = find_image_positions(input_ids, self.image_token_id, self.prompt_image_tokens)
        after = input_ids.shape[1] - 1 - int(image_positions[-1])
        if after < self.min_text_after_image:
            raise ValueError(
                f"this artifact's selection needs at least {self.min_text_after_image} prompt tokens after the "
                f"image (DART's text pivots), the prompt has {after}: ask a longer question"
            )
        self.family.check_pixel_values(pixel_values)
        return PromptInputs(
            input_ids=input_ids, pixel_values=pixel_values, image_positions=image_positions, host=self.family
        )

    def decode(self, token_ids: list[int]) -> str:
        return "" if self.tokenizer is None else self.tokenizer.decode(token_ids)


class Runner:
    """An artifact folder loaded on one backend, answering prompts about images.

    Args:
        artifact: an artifact folder or a loaded `Artifact`.
        backend: "onnx" (ONNX Runtime) or "executorch".
        num_threads: intra-op threads for ONNX Runtime; None lets it choose.
        low_memory: ONNX Runtime holds one copy of the language model, reopening its graphs in every
            generation (`OnnxSession`); ExecuTorch loads the vision encoder for each image and
            releases it after (`ExecuTorchSession`).
        verify: check the sha256 of every artifact file when `artifact` is a folder.
        allow_failed_parity: use a backend whose parity check failed at export (refused otherwise).
        session: the artifact already open on `backend` (e.g. an `OnnxSession` that profiles);
            default: opened here.
    Raises:
        FileNotFoundError, ArtifactError: see `load_artifact`; a failed parity check; graphs that
            contradict the manifest.
    """

    def __init__(
        self,
        artifact: str | os.PathLike | Artifact,
        backend: str = "onnx",
        *,
        num_threads: int | None = None,
        verify: bool = True,
        allow_failed_parity: bool = False,
        low_memory: bool = False,
        session: Session | None = None,
    ):
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact, verify=verify)
        self.artifact.require_parity(backend, allow_failed=allow_failed_parity)
        self.session: Session = session or open_session(
            self.artifact, backend, num_threads=num_threads, low_memory=low_memory
        )
        self.inputs = InputProcessor.from_artifact(self.artifact)

    @property
    def backend(self) -> str:
        return self.session.backend

    def generate(
        self,
        image: str | os.PathLike | Image.Image,
        prompt: str,
        config: GenerationConfig = GenerationConfig(),
        *,
        on_note: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Answer `prompt` about `image` (a path or a PIL image) with greedy decoding; `on_note` as
        for `InputProcessor`."""
        start = time.perf_counter()
        inputs = self.inputs(image, prompt, on_note=on_note)
        return self._generate(inputs, config, start=start, preprocess_ms=ms_since(start))

    def generate_ids(
        self, input_ids: np.ndarray, pixel_values: np.ndarray, config: GenerationConfig = GenerationConfig()
    ) -> GenerationResult:
        """Greedy decoding from prepared inputs: input_ids int64 [1, T], pixel_values of the family's shape."""
        return self._generate(self.inputs.prepare(input_ids, pixel_values), config, start=time.perf_counter(), preprocess_ms=0.0)

    def _generate(
        self, inputs: PromptInputs, config: GenerationConfig, *, start: float, preprocess_ms: float
    ) -> GenerationResult:
        check_sequence_fits(self.artifact, inputs.num_tokens, config.max_new_tokens)
        result = greedy(self.session, inputs, config, self.artifact.text.eos_token_ids)
        stats = Stats(
            preprocess_ms=preprocess_ms,
            vision_ms=result.vision_ms,
            embed_ms=result.embed_ms,
            prefill_ms=result.prefill_ms,
            time_to_first_token_ms=preprocess_ms + result.time_to_first_token_ms,
            decode_ms=result.decode_ms,
            num_prompt_tokens=inputs.num_tokens,
            num_generated_tokens=len(result.token_ids),
        )
        return GenerationResult(
            text=self.inputs.decode(result.token_ids),
            token_ids=result.token_ids,
            kept_indices=result.kept_indices,
            selection_order=result.selection_order,
            stats=stats,
            logits=result.logits,
        )


@dataclass(frozen=True)
class Greedy:
    """What `greedy` returns: the tokens, kept indices (ascending and in selection order) and logits
    (with `return_logits`) of one prompt, and the milliseconds of each step (time to first token:
    vision + embed + prefill)."""

    token_ids: list[int]
    kept_indices: list[int]
    selection_order: list[int]
    logits: list[np.ndarray] | None
    vision_ms: float
    embed_ms: float
    prefill_ms: float
    decode_ms: float

    @property
    def time_to_first_token_ms(self) -> float:
        return self.vision_ms + self.embed_ms + self.prefill_ms


def greedy(session: Session, inputs: PromptInputs, config: GenerationConfig, eos_token_ids: frozenset[int]) -> Greedy:
    """Greedy decoding of one prompt on `session`: the one generation loop of the project.

    Stops after `config.max_new_tokens` tokens, or at a token of `eos_token_ids` (kept in the
    result) unless `config.ignore_eos`.
    """
    tick = time.perf_counter()
    # [N, d] and None, or [R, d] and the selection of the R tokens when the vision graph selects.
    image_embeds, vision_selection = session.vision_encoder(inputs.pixel_values)
    vision_ms = ms_since(tick)

    tick = time.perf_counter()
    inputs_embeds = session.embed_tokens(inputs.input_ids)  # [1, T, d]
    inputs_embeds[0, inputs.image_positions] = image_embeds
    positions = inputs.positions(None if vision_selection is None else vision_selection[0])
    embed_ms = ms_since(tick)

    tick = time.perf_counter()
    logits, prefill_selection, cache = session.prefill(inputs_embeds, positions.prompt, inputs.image_positions)
    prefill_ms = ms_since(tick)
    token = int(logits[0].argmax())

    tokens = [token]
    all_logits = [logits[0]] if config.return_logits else None
    tick = time.perf_counter()
    eos = frozenset() if config.ignore_eos else eos_token_ids
    while len(tokens) < config.max_new_tokens and token not in eos:
        token_embeds = session.embed_tokens(np.array([[token]], dtype=np.int64))  # [1, 1, d]
        logits, cache = session.decode(token_embeds, positions.decode(len(tokens) - 1), cache)
        token = int(logits[0].argmax())
        tokens.append(token)
        if all_logits is not None:
            all_logits.append(logits[0])
    # A vision-selecting artifact's prefill keeps all its R image tokens (`ModelFamily.prefill`).
    kept, order = prefill_selection if vision_selection is None else vision_selection
    return Greedy(
        token_ids=tokens,
        kept_indices=kept.tolist(),
        selection_order=order.tolist(),
        logits=all_logits,
        vision_ms=vision_ms,
        embed_ms=embed_ms,
        prefill_ms=prefill_ms,
        decode_ms=ms_since(tick),
    )


def check_sequence_fits(artifact: Artifact, prompt_tokens: int, new_tokens: int) -> None:
    """Raise ValueError when the prompt and the generated tokens overrun the graphs' sequence bound."""
    if prompt_tokens + new_tokens > artifact.text.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_tokens} tokens) + {new_tokens} new tokens exceeds the artifact's "
            f"{artifact.text.max_seq_len} positions (export with a larger --max-seq-len)"
        )


def ms_since(tick: float) -> float:
    """Milliseconds since `tick`, a `time.perf_counter()` reading."""
    return (time.perf_counter() - tick) * 1000.0
