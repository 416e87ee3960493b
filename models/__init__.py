"""Vision-language models with VLM-Pruner inside the language model, as exportable modules."""

from models.checkpoints import LoadedModel, load_for_export, load_model, resolve_checkpoint
from models.decoder import DecodeStep, KVCache, Prefill, TokenEmbedding
from models.families import ModelFamily, get_family
from models.random_weights import build_random_model
from models.registry import MODEL_SPECS, ModelSpec, get_spec
from models.tiny_llava import build_tiny_llava
from models.tiny_qwen2_vl import build_tiny_qwen2_vl

__all__ = [
    "MODEL_SPECS",
    "DecodeStep",
    "KVCache",
    "LoadedModel",
    "ModelFamily",
    "ModelSpec",
    "Prefill",
    "TokenEmbedding",
    "build_random_model",
    "build_tiny_llava",
    "build_tiny_qwen2_vl",
    "get_family",
    "get_spec",
    "load_for_export",
    "load_model",
    "resolve_checkpoint",
]
