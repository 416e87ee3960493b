"""Greedy generation over an artifact: preprocess, tokenize, vision encoder, prefill, decode, detokenize.

    image ──preprocess──> pixel_values ──vision_encoder──> image_embeds [N, d] ─┐
    prompt ──template + tokenizer──> input_ids ──embed_tokens──> [1, T, d] ─────┴─ splice at image_start
        ──prefill (prunes N -> R)──> logits, kept_indices, cache ──argmax──> first token
        ──decode at positions T, T + 1, ...──> one token per step until EOS or max_new_tokens

The same steps as the eager `models.PrunedLlava`; numpy between the steps, no torch on the ONNX
Runtime path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from runtime.artifact import TOKENIZER_FILE, Artifact, load_artifact
from runtime.backends import Session, open_session
from runtime.preprocess import PreprocessConfig, load_image, preprocess_image
from runtime.tokenizer import PromptTokenizer, find_image_block


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
        kept_indices: the image tokens the pruner kept, positions inside the image block.
        stats: timings.
        logits: with `return_logits`, float32 [V] of the prefill and of each decode step, one
            per generated token; else None.
    """

    text: str
    token_ids: list[int]
    kept_indices: list[int]
    stats: Stats
    logits: list[np.ndarray] | None = None


class InputProcessor:
    """Image and prompt -> model inputs, as the artifact's processor makes them; needs no session.

    Args:
        artifact: a loaded artifact (its `preprocess` section, prompt template and tokenizer).
    """

    def __init__(self, artifact: Artifact):
        self.preprocess_config = PreprocessConfig.from_manifest(artifact.manifest["preprocess"])
        self.tokenizer = PromptTokenizer(
            artifact.path(TOKENIZER_FILE),
            prompt_template=artifact.prompt_template,
            image_token_id=artifact.text.image_token_id,
            num_image_tokens=artifact.num_image_tokens,
        )

    def __call__(
        self, image: str | os.PathLike | Image.Image, prompt: str, *, on_note: Callable[[str], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """input_ids int64 [1, T] with the N image placeholders, pixel_values float32 [1, 3, S, S].

        `on_note` receives what the user should know about the input (e.g. an animated image of
        which only the first frame is used).

        Raises:
            FileNotFoundError / ValueError: an image path that does not exist or cannot be read,
                an empty prompt, or one holding the image token.
        """
        input_ids = self.tokenizer.encode(prompt)
        pixel_values = preprocess_image(load_image(image, on_note=on_note), self.preprocess_config)
        return input_ids, pixel_values


class Runner:
    """An artifact folder loaded on one backend, answering prompts about images.

    Args:
        artifact: an artifact folder or a loaded `Artifact`.
        backend: "onnx" (ONNX Runtime) or "executorch".
        num_threads: intra-op threads for ONNX Runtime; None lets it choose.
        verify: check the sha256 of every artifact file when `artifact` is a folder.
        allow_failed_parity: use an artifact whose export failed its parity check (refused otherwise).
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
    ):
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact, verify=verify)
        self.artifact.require_parity(allow_failed=allow_failed_parity)
        self.session: Session = open_session(self.artifact, backend, num_threads=num_threads)
        self.inputs = InputProcessor(self.artifact)

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
        input_ids, pixel_values = self.inputs(image, prompt, on_note=on_note)
        preprocess_ms = _ms_since(start)
        return self._generate(input_ids, pixel_values, config, start=start, preprocess_ms=preprocess_ms)

    def generate_ids(
        self, input_ids: np.ndarray, pixel_values: np.ndarray, config: GenerationConfig = GenerationConfig()
    ) -> GenerationResult:
        """Greedy decoding from prepared inputs: input_ids int64 [1, T], pixel_values float32 [1, 3, S, S]."""
        return self._generate(input_ids, pixel_values, config, start=time.perf_counter(), preprocess_ms=0.0)

    def _generate(
        self,
        input_ids: np.ndarray,
        pixel_values: np.ndarray,
        config: GenerationConfig,
        *,
        start: float,
        preprocess_ms: float,
    ) -> GenerationResult:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        pixel_values = np.asarray(pixel_values, dtype=np.float32)
        num_image_tokens = self.artifact.num_image_tokens
        image_start = find_image_block(input_ids, self.artifact.text.image_token_id, num_image_tokens)
        size = self.inputs.preprocess_config.crop_size
        if pixel_values.shape != (1, 3, *size):
            raise ValueError(f"pixel_values must be [1, 3, {size[0]}, {size[1]}], got {list(pixel_values.shape)}")
        position = input_ids.shape[1]
        check_sequence_fits(self.artifact, position, config.max_new_tokens)

        tick = time.perf_counter()
        image_embeds = self.session.vision_encoder(pixel_values)  # [N, d]
        vision_ms = _ms_since(tick)

        tick = time.perf_counter()
        inputs_embeds = self.session.embed_tokens(input_ids)  # [1, T, d]
        inputs_embeds[0, image_start : image_start + num_image_tokens] = image_embeds
        embed_ms = _ms_since(tick)

        tick = time.perf_counter()
        logits, kept, cache = self.session.prefill(inputs_embeds, np.array([image_start], dtype=np.int64))
        prefill_ms = _ms_since(tick)
        token = int(logits[0].argmax())
        time_to_first_token_ms = _ms_since(start)

        tokens = [token]
        all_logits = [logits[0]] if config.return_logits else None
        tick = time.perf_counter()
        eos = frozenset() if config.ignore_eos else self.artifact.text.eos_token_ids
        while len(tokens) < config.max_new_tokens and token not in eos:
            token_embeds = self.session.embed_tokens(np.array([[token]], dtype=np.int64))  # [1, 1, d]
            logits, cache = self.session.decode(token_embeds, np.array([position], dtype=np.int64), cache)
            position += 1
            token = int(logits[0].argmax())
            tokens.append(token)
            if all_logits is not None:
                all_logits.append(logits[0])
        decode_ms = _ms_since(tick)

        stats = Stats(
            preprocess_ms=preprocess_ms,
            vision_ms=vision_ms,
            embed_ms=embed_ms,
            prefill_ms=prefill_ms,
            time_to_first_token_ms=time_to_first_token_ms,
            decode_ms=decode_ms,
            num_prompt_tokens=input_ids.shape[1],
            num_generated_tokens=len(tokens),
        )
        return GenerationResult(
            text=self.inputs.tokenizer.decode(tokens),
            token_ids=tokens,
            kept_indices=[int(i) for i in kept],
            stats=stats,
            logits=all_logits,
        )


def check_sequence_fits(artifact: Artifact, prompt_tokens: int, new_tokens: int) -> None:
    """Raise ValueError when the prompt and the generated tokens overrun the graphs' sequence bound."""
    if prompt_tokens + new_tokens > artifact.text.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_tokens} tokens) + {new_tokens} new tokens exceeds the artifact's "
            f"{artifact.text.max_seq_len} positions (export with a larger --max-seq-len)"
        )


def _ms_since(tick: float) -> float:
    return (time.perf_counter() - tick) * 1000.0
