"""A processor for models whose tokenizer is not on the machine: CLIP image processing and a byte-level BPE.

Used by tiny-llava's checkpoint and by every export from random weights: the image processing is
LLaVA-1.5's (CLIP at the spec's image size) and the tokenizer has exactly the spec's vocabulary
size and special token ids, so that the runtime's pipeline is the real one. A BPE trained on
the small built-in corpus below gives the first few hundred ids; a large vocabulary (32064 for
LLaVA-1.5) is filled up with placeholder tokens, whose ids random weights can still generate.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import GenerationConfig, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

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


def build_processor(spec: ModelSpec) -> LlavaProcessor:
    """CLIP image processor + the trained tokenizer + the LLaVA-1.5 chat template."""
    side = spec.vision.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(spec),
        patch_size=spec.vision.patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=spec.chat_template,
    )


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE of exactly `spec.text.vocab_size` tokens that prepends <s> like Llama's.

    With <image> and <pad> right after </s> (ids 3 and 4, tiny-llava), all five are trained as
    special tokens; otherwise (Llama's 32000 and 32001) they are added at their ids among placeholders.
    """
    tokenizer = Tokenizer(BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    late = {spec.image_token_id: "<image>", spec.pad_token_id: "<pad>"}
    trained_specials = list(SPECIAL_TOKENS if sorted(late) == [3, 4] else SPECIAL_TOKENS[:3])
    trainer = trainers.BpeTrainer(
        vocab_size=min(spec.text.vocab_size, TRAINED_VOCAB_LIMIT),
        special_tokens=trained_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    # One call per run of placeholders: adding tokens one by one is quadratic.
    start = tokenizer.get_vocab_size()
    for index in sorted(i for i in late if i >= start) + [spec.text.vocab_size]:
        tokenizer.add_tokens([AddedToken(f"<placeholder_{i}>", special=False) for i in range(start, index)])
        if index < spec.text.vocab_size:
            tokenizer.add_tokens([AddedToken(late[index], special=True)])
        start = index + 1
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    if tokenizer.get_vocab_size() != spec.text.vocab_size:
        raise ValueError(
            f"the tiny tokenizer has {tokenizer.get_vocab_size()} tokens, the spec wants {spec.text.vocab_size}"
        )
    for token, expected in (("<image>", spec.image_token_id), ("<pad>", spec.pad_token_id)):
        if tokenizer.token_to_id(token) != expected:
            raise ValueError(f"{token} got id {tokenizer.token_to_id(token)}, the spec wants {expected}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=spec.text.max_position_embeddings,
    )


