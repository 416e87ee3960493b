"""manifest.json of an artifact folder (format in export/ARTIFACTS.md): build, write, update, verify."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedModel, ProcessorMixin

from models import ModelSpec
from models.decoder import head_dim
from models.families import selection_graph
from models.quantize import Quantization
from models.selectors import SelectionMethod
from runtime.artifact import sha256_file  # the reader's own, so writer and reader agree
from runtime.contract import FORMAT_VERSION, MANIFEST
# `parity.status`: "skipped" (not run), "pending" (from the moment the artifact is in place until the
# check ends: an export killed meanwhile leaves it), then "passed" or "failed" with the report.
ParityStatus = Literal["skipped", "pending", "passed", "failed"]
# Distributions whose versions are recorded; None when one is not installed.
_VERSIONED = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "executorch")


def build_manifest(
    *,
    spec: ModelSpec,
    model: PreTrainedModel,
    processor: ProcessorMixin,
    checkpoint: Path | None,
    seed: int | None,
    quantization: Quantization,
    vision_quantization: Quantization,
    onnx_profile: str,
    keep: int,
    method: SelectionMethod,
    max_seq_len: int,
    files: dict[str, dict[str, int | str]],
    export_seconds: dict[str, float],
    peak_rss_mib: dict[str, float],
    parity: ParityStatus,
) -> dict[str, Any]:
    """The manifest of an artifact; `parity` says whether its parity check was skipped or is still to run
    (`update_manifest` records its report when it ends).

    Args:
        checkpoint: the folder the weights were loaded from; None for random weights (drawn from `seed`).
        quantization: the weight format of the language model's linears.
        vision_quantization: the weight format of the vision tower's layers (`models.quantize.VISION_QUANTIZATIONS`).
        onnx_profile: how ONNX Runtime computes them (`runtime.contract.ONNX_PROFILES`).
        files: `file_entries` of the complete artifact folder.
        export_seconds: {stage: seconds}.
        peak_rss_mib: {stage: peak resident memory of the exporting process after the stage, MiB}.
    """
    family = spec.model_family
    inputs = family.input_sections(spec, processor)
    text = model.config.text_config
    generation = model.generation_config
    n = spec.num_image_tokens
    return {
        "format_version": FORMAT_VERSION,
        "model": {
            "name": spec.name,
            "family": family.name,
            "source": "random" if checkpoint is None else "checkpoint",
            "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
            "seed": seed,
            "dtype": "float32",
            "quantization": quantization.value,
            "vision_quantization": vision_quantization.value,
            "onnx_profile": onnx_profile,
        },
        "geometry": inputs["geometry"],
        "pruning": {
            "method": method.name,
            "graph": selection_graph(spec, keep, method),
            "keep": keep,
            "prune_layer": spec.prune_layer,
            "rate": round(1.0 - keep / n, 6),
            "config": method.settings(),
            # What the runtime must check of a prompt: only a selection that runs needs it.
            "min_text_after_image": method.min_text_after_image if keep < n else 0,
        },
        "text": {
            "num_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_kv_heads": text.num_key_value_heads,
            "head_dim": head_dim(text),
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "vocab_size": text.vocab_size,
            **inputs["text"],
            "eos_token_id": generation.eos_token_id,
            "bos_token_id": generation.bos_token_id,
            "max_seq_len": max_seq_len,
        },
        "vision": family.vision_manifest(model, spec),
        "prompt_template": inputs["prompt_template"],
        "preprocess": inputs["preprocess"],
        "versions": {**versions(), "format_version": FORMAT_VERSION},
        "files": files,
        "export_seconds": dict(export_seconds),
        "peak_rss_mib": dict(peak_rss_mib),
        "parity": {"status": parity},
    }


def versions() -> dict[str, str | None]:
    """Installed versions of the exporting and running packages."""
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def file_entries(root: Path) -> dict[str, dict[str, int | str]]:
    """{relative posix path: {bytes, sha256}} of every file under `root` but the manifest, sorted."""
    root = Path(root)
    return {
        relative: {"bytes": (root / relative).stat().st_size, "sha256": sha256_file(root / relative)}
        for relative in _artifact_files(root)
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write `root/manifest.json` atomically: a reader sees the old file or the new one, whole."""
    path = Path(root) / MANIFEST
    temporary = path.with_name(f".{MANIFEST}.tmp")
    try:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((Path(root) / MANIFEST).read_text())


def update_manifest(root: Path, **fields: Any) -> dict[str, Any]:
    """Set top-level fields of an existing manifest (e.g. `parity=`); the file list is unchanged."""
    manifest = read_manifest(root)
    unknown = set(fields) - set(manifest)
    if unknown:
        raise ValueError(f"{MANIFEST} has no fields {sorted(unknown)}")
    manifest.update(fields)
    write_manifest(root, manifest)
    return manifest


def verify_files(root: Path) -> list[str]:
    """Problems with the files the manifest lists (missing, size or sha256 mismatch, unlisted); [] if none."""
    root = Path(root)
    listed = read_manifest(root)["files"]
    problems = []
    for relative, entry in listed.items():
        path = root / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{relative}: {path.stat().st_size} bytes, manifest {entry['bytes']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{relative}: sha256 differs from the manifest")
    unlisted = set(_artifact_files(root)) - set(listed)
    problems.extend(f"{relative}: not in the manifest" for relative in sorted(unlisted))
    return problems


def _artifact_files(root: Path) -> list[str]:
    """Relative posix paths of every file under `root` but the manifest, sorted."""
    return [
        path.relative_to(root).as_posix()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST
    ]
