"""Vision-language models with VLM-Pruner inside the language model, as exportable modules."""

from models.checkpoints import LoadedModel, load_for_export, load_model, resolve_checkpoint
from models.generation import Generation, PrunedLlava, find_image_block
from models.llava import DecodeStep, Prefill, TokenEmbedding, VisionEncoder
from models.random_weights import build_random_model
from models.registry import MODEL_SPECS, ModelSpec, get_spec
from models.tiny_llava import build_tiny_llava

__all__ = [
    "MODEL_SPECS",
    "DecodeStep",
    "Generation",
    "LoadedModel",
    "ModelSpec",
    "Prefill",
    "PrunedLlava",
    "TokenEmbedding",
    "VisionEncoder",
    "build_random_model",
    "build_tiny_llava",
    "find_image_block",
    "get_spec",
    "load_for_export",
    "load_model",
    "resolve_checkpoint",
]
