"""Build the `tiny-llava` checkpoint: LLaVA-1.5 at toy size, random weights, saved like a real one.

The directory holds what `from_pretrained` expects from a llava-hf checkpoint: the model (config,
safetensors, generation config) and a `LlavaProcessor` (CLIP image processor at 336 px, a small
byte-level BPE tokenizer trained here on a built-in corpus, the LLaVA-1.5 chat template). Nothing
is downloaded. Building is deterministic and idempotent: a recipe stamp in the directory tells a
finished build of the current recipe, which is then reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from models.random_weights import build_random_model
from models.registry import ModelSpec, get_spec

NAME = "tiny-llava"
SEED = 2  # with this seed, greedy decoding of the random weights does not repeat one token
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "build" / "models" / NAME
STAMP_FILE = "tiny_llava_recipe.json"

# Ids follow this order: <unk> 0, <s> 1, </s> 2, <image> 3, <pad> 4 (the spec's image and pad ids).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<pad>")

_CORPUS = (
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


def build_tiny_llava(directory: str | os.PathLike | None = None) -> Path:
    """Build the tiny-llava checkpoint into `directory` unless the current recipe is already there.

    Args:
        directory: target folder; default `build/models/tiny-llava` in the repository.
    Returns:
        The checkpoint directory, loadable with `LlavaForConditionalGeneration.from_pretrained`
        and `LlavaProcessor.from_pretrained`.
    """
    target = Path(directory) if directory is not None else DEFAULT_DIR
    spec = get_spec(NAME)
    stamp = _recipe_stamp(spec)
    if _read_stamp(target) == stamp:
        return target
    if target.exists() and any(target.iterdir()) and _read_stamp(target) is None:
        raise FileExistsError(f"{target} exists and is not a tiny-llava build; choose an empty or new directory")

    # Build next to the target and move it in at the end, so that a half-written build never
    # passes for a finished one.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        processor = build_processor(spec)
        processor.save_pretrained(staging)
        model = build_model(spec)
        model.save_pretrained(staging)
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def build_model(spec: ModelSpec) -> LlavaForConditionalGeneration:
    """The tiny model with float32 random weights drawn from `SEED`."""
    model = build_random_model(spec.name, materialize=True, seed=SEED)
    model.generation_config = GenerationConfig(
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        pad_token_id=spec.pad_token_id,
    )
    return model.eval()


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
    """A byte-level BPE of exactly `spec.text.vocab_size` tokens that prepends <s> like Llama's."""
    tokenizer = Tokenizer(BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.text.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
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


def _recipe_stamp(spec: ModelSpec) -> dict[str, str | int]:
    recipe = repr((spec, SEED, SPECIAL_TOKENS, _CORPUS)).encode()
    return {"name": NAME, "seed": SEED, "recipe_sha256": hashlib.sha256(recipe).hexdigest()}


def _read_stamp(directory: Path) -> dict | None:
    path = directory / STAMP_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
