"""A LLaVA processor for models whose tokenizer is not on the machine: the family's image processing and a byte-level BPE.

Used by the tiny LLaVA checkpoints and by every LLaVA export from random weights: the family's image
processor (`models.llava`, `models.llava_next`) with this tokenizer, which has exactly the spec's vocabulary
size and special token ids, so that the runtime's pipeline is the real one. A BPE trained on
the small built-in corpus below gives the first few hundred ids; a large vocabulary (32064 for
LLaVA-1.5) is filled up with placeholder tokens, whose ids random weights can still generate.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import BaseImageProcessor, GenerationConfig, PreTrainedTokenizerFast, ProcessorMixin

from models.registry import ModelSpec

# Llama's ids: <unk> 0, <s> 1, </s> 2; then <image> and <pad> at the spec's ids.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<pad>")
BOS, EOS = "<s>", "</s>"
# Merges learned from the corpus at most: the rest of a large vocabulary is placeholders.
TRAINED_VOCAB_LIMIT = 1024

CORPUS = (
    "USER: What is shown in this image? ASSISTANT: The image shows a red car parked on a street.",
    "USER: Describe the picture in detail. ASSISTANT: A small dog sits on green grass next to a blue ball.",
    "USER: How many people are there? ASSISTANT: There are three people standing near the door.",
    "USER: What color is the sky? ASSISTANT: The sky is bright blue with a few white clouds.",
    "USER: Is there a cat in the photo? ASSISTANT: Yes, a black cat is sleeping on the sofa.",
    "USER: What is the man holding? ASSISTANT: The man is holding an umbrella and a cup of coffee.",
    "USER: Where was this picture taken? ASSISTANT: It looks like a busy market in the city center.",
    "USER: What does the sign say? ASSISTANT: The sign says stop, written in white letters on red.",
    "A train crosses a bridge over the river at sunset.",
    "Two children are playing football in the park while their parents watch.",
    "The kitchen table holds a bowl of fruit, a loaf of bread and a glass of milk.",
    "A tall building with many windows stands behind a row of trees.",
    "An airplane flies above the mountains covered with snow.",
    "The woman in the yellow dress is reading a book on a bench.",
    "Boats float in the harbor, and birds sit on the wooden pier.",
    "A plate of pasta with tomato sauce is served on a white table.",
)


def generation_config(spec: ModelSpec) -> GenerationConfig:
    """bos, eos and pad ids of the synthetic tokenizer."""
    return GenerationConfig(
        bos_token_id=SPECIAL_TOKENS.index(BOS), eos_token_id=SPECIAL_TOKENS.index(EOS), pad_token_id=spec.pad_token_id
    )


def instruct_generation_config(special_ids: dict[str, int]) -> GenerationConfig:
    """Qwen2-Instruct's bos, eos and pad ids (Qwen2-VL, LLaVA-Video): it stops at <|im_end|> or
    <|endoftext|>; `special_ids` maps those tokens to the tokenizer's ids."""
    endoftext = special_ids["<|endoftext|>"]
    return GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[special_ids["<|im_end|>"], endoftext], pad_token_id=endoftext
    )


def build_processor(
    spec: ModelSpec,
    image_processor: BaseImageProcessor,
    processor_class: type[ProcessorMixin],
    *,
    vision_feature_select_strategy: str,
) -> ProcessorMixin:
    """A LLaVA-style processor (`processor_class`): `image_processor` + the trained tokenizer + the
    spec's chat template."""
    return processor_class(
        image_processor=image_processor,
        tokenizer=build_tokenizer(spec),
        patch_size=spec.vision.patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=spec.chat_template,
    )


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE of exactly `spec.text.vocab_size` tokens that prepends <s> like Llama's.

    <unk>, <s>, </s> at ids 0, 1, 2; <image> and <pad> at the spec's ids (3 and 4 in tiny-llava,
    Llama's 32000 and 32001 among placeholders otherwise).
    """
    specials = {token: i for i, token in enumerate(SPECIAL_TOKENS[:3])}
    specials |= {"<image>": spec.image_token_id, "<pad>": spec.pad_token_id}
    tokenizer = byte_level_bpe(spec.text.vocab_size, specials, unk_token="<unk>")
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=spec.text.max_position_embeddings,
    )


def byte_level_bpe(vocab_size: int, specials: dict[str, int], *, unk_token: str | None = None) -> Tokenizer:
    """A byte-level BPE of exactly `vocab_size` tokens trained on `CORPUS`, each special token at its id.

    The special tokens at ids 0, 1, ... are trained in, in front of the merges; the others are
    added at their ids among placeholder tokens `<placeholder_i>`, which fill a vocabulary larger
    than the corpus' merges (`TRAINED_VOCAB_LIMIT`).

    Raises:
        ValueError: two special tokens at one id, or an id the vocabulary does not hold.
    """
    by_id = {i: token for token, i in specials.items()}
    if len(by_id) != len(specials) or not all(0 <= i < vocab_size for i in by_id):
        raise ValueError(f"special token ids {specials} must be distinct and below the vocabulary size {vocab_size}")
    leading = []
    while len(leading) in by_id:
        leading.append(by_id.pop(len(leading)))
    tokenizer = Tokenizer(BPE(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, TRAINED_VOCAB_LIMIT),
        special_tokens=leading,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    # One call per run of placeholders: adding tokens one by one is quadratic.
    start = tokenizer.get_vocab_size()
    for index in sorted(i for i in by_id if i >= start) + [vocab_size]:
        tokenizer.add_tokens([AddedToken(f"<placeholder_{i}>", special=False) for i in range(start, index)])
        if index < vocab_size:
            tokenizer.add_tokens([AddedToken(by_id[index], special=True)])
        start = index + 1
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"the synthetic tokenizer has {tokenizer.get_vocab_size()} tokens, {vocab_size} were asked for")
    wrong = {token: tokenizer.token_to_id(token) for token, i in specials.items() if tokenizer.token_to_id(token) != i}
    if wrong:
        raise ValueError(f"special tokens at the wrong ids: {wrong}, wanted {specials}")
    return tokenizer
