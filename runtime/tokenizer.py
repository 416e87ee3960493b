"""Prompt tokenization with the `tokenizers` library, as transformers' processors do it.

The conversation template places one image token; it is expanded into N copies before encoding
(what the processor does), then the text is encoded with the tokenizer's special tokens (<s>).
No torch, no transformers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from runtime.artifact import ArtifactError


class PromptTokenizer:
    """Encode a user prompt into input_ids with the N image placeholders; decode generated ids.

    Args:
        tokenizer_file: the processor's tokenizer.json.
        prompt_template: conversation template with `{prompt}` and one image token.
        image_token_id: id of the image placeholder.
        num_image_tokens: N, placeholders per image.
    """

    def __init__(
        self, tokenizer_file: str | os.PathLike, *, prompt_template: str, image_token_id: int, num_image_tokens: int
    ):
        try:
            self.tokenizer = Tokenizer.from_file(os.fspath(tokenizer_file))
        except Exception as error:  # tokenizers raises a bare Exception for any unparsable file
            raise ArtifactError(f"{tokenizer_file} is not a tokenizer the tokenizers library can read: {error}") from None
        image_token = self.tokenizer.id_to_token(image_token_id)
        if image_token is None:
            raise ValueError(f"the tokenizer has no token with the image token id {image_token_id}")
        if prompt_template.count(image_token) != 1 or "{prompt}" not in prompt_template:
            raise ValueError(f"the prompt template must hold one {image_token} and {{prompt}}, got {prompt_template!r}")
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.prompt_template = prompt_template

    def encode(self, prompt: str) -> np.ndarray:
        """input_ids int64 [1, T] of the templated prompt, the image token repeated N times.

        Raises:
            ValueError: a prompt that is not a string, is empty or blank, or holds the image token.
        """
        if not isinstance(prompt, str):
            raise ValueError(f"the prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError("the prompt is empty: ask a question about the image")
        if self.image_token in prompt:
            raise ValueError(
                f"the prompt must not contain {self.image_token}: the conversation template places the image"
            )
        text = self.prompt_template.format(prompt=prompt)
        text = text.replace(self.image_token, self.image_token * self.num_image_tokens)
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=True).ids, dtype=np.int64)[None]
        find_image_positions(ids, self.image_token_id, self.num_image_tokens)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of generated ids, special tokens removed."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)


def find_image_positions(input_ids: np.ndarray, image_token_id: int, num_image_tokens: int) -> np.ndarray:
    """Positions of the N image placeholders in `input_ids`, int64 [N], ascending.

    Args:
        input_ids: int64 [1, T].
    Raises:
        ValueError: batch size other than 1, or not exactly N placeholders.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"batch size 1 only: input_ids must be [1, T], got shape {input_ids.shape}")
    positions = np.flatnonzero(input_ids[0] == image_token_id)
    if positions.size != num_image_tokens:
        raise ValueError(
            f"expected one image ({num_image_tokens} image tokens, id {image_token_id}) in input_ids, "
            f"found {positions.size} image tokens"
        )
    return positions.astype(np.int64)
