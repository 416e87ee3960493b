"""Open an artifact folder (layout and manifest in `export/ARTIFACTS.md`) and check it before use.

Everything the runtime reads from the manifest is parsed here, so that a missing field, an unknown
format version, a missing file or a corrupted one (sha256 mismatch) is reported once, by name,
before any runtime touches the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.contract import (
    BACKEND_FILES, FORMAT_VERSION, MANIFEST, ONNX_PROFILES, SELECTION_GRAPHS, TOKENIZER_FILE, VISION_QUANTIZATIONS,
)

_HASH_CHUNK = 1 << 20


# The manifest's `parity.status` values (see export/ARTIFACTS.md); "pending" means the export was
# stopped before its parity check ended, shown to the user as "interrupted".
PARITY_STATES = ("passed", "failed", "skipped", "pending")


class ArtifactError(ValueError):
    """An artifact folder the runtime cannot use: corrupted file, unknown format version, bad manifest."""


@dataclass(frozen=True)
class TextInfo:
    """The language model facts the runtime needs (manifest `text`)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    image_token_id: int
    eos_token_ids: frozenset[int]
    bos_token_id: int | None
    max_seq_len: int


@dataclass(frozen=True)
class Artifact:
    """A checked artifact folder.

    Attributes:
        root: the folder.
        manifest: manifest.json as parsed JSON, for fields the runtime does not interpret.
        text: the language model facts.
        num_image_tokens: N, image tokens per image.
        keep: R, image tokens kept by the pruner (R = N: unpruned).
        prompt_template: the conversation template with `{prompt}` and one image token.
        backends: the backends whose files the artifact holds, in `BACKEND_FILES` order.
        parity: the export's parity check: "passed", "failed", "skipped" or "interrupted".
    """

    root: Path
    manifest: dict[str, Any]
    text: TextInfo
    num_image_tokens: int
    keep: int
    prompt_template: str
    backends: tuple[str, ...]
    parity: str

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def dtype(self) -> str:
        return self.manifest["model"]["dtype"]

    @property
    def quantization(self) -> str:
        """Weight format of the language model's linears: "none", "int4" or "int8"."""
        return self.manifest["model"]["quantization"]

    @property
    def onnx_profile(self) -> str:
        """How ONNX Runtime computes the quantized linears (`runtime.contract.ONNX_PROFILES`)."""
        profile = _section_field(self.manifest, "model", "onnx_profile", str)
        if profile not in ONNX_PROFILES:
            raise ArtifactError(f"{MANIFEST}: model.onnx_profile must be one of {', '.join(ONNX_PROFILES)}, got {profile!r}")
        return profile

    @property
    def vision_quantization(self) -> str:
        """Weight format of the vision tower's layers (`runtime.contract.VISION_QUANTIZATIONS`)."""
        quantization = _section_field(self.manifest, "model", "vision_quantization", str)
        if quantization not in VISION_QUANTIZATIONS:
            choices = ", ".join(VISION_QUANTIZATIONS)
            raise ArtifactError(f"{MANIFEST}: model.vision_quantization must be one of {choices}, got {quantization!r}")
        return quantization

    def quantizes_activations(self, backend: str) -> bool:
        """Whether `backend` runs the language model's quantized linears with int8 activations
        quantized on the fly: ExecuTorch's 8da4w / 8da8w, ONNX Runtime's fast profile."""
        return self.quantization != "none" and (backend == "executorch" or self.onnx_profile == "fast")

    def path(self, relative: str) -> Path:
        return self.root / relative

    def require_backend(self, backend: str) -> None:
        """Raise ArtifactError when the artifact holds no export for `backend`."""
        if backend not in BACKEND_FILES:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_FILES)}")
        if backend not in self.backends:
            held = ", ".join(self.backends) or "none"
            raise ArtifactError(f"{self.root} holds no {backend} export (backends in the artifact: {held})")

    def parity_on(self, backend: str) -> str:
        """The parity check's verdict on `backend`'s graphs: the artifact's, except where a failed
        check passed this backend and the preprocessing (another backend failed)."""
        if self.parity != "failed":
            return self.parity
        report = self.manifest["parity"].get("report")
        report = report if isinstance(report, dict) else {}
        own = report.get("backends", {}).get(backend) if isinstance(report.get("backends"), dict) else None
        passed = isinstance(own, dict) and own.get("passed") is True and report.get("preprocess_passed") is True
        return "passed" if passed else "failed"

    def require_parity(self, backend: str, *, allow_failed: bool = False) -> None:
        """Refuse `backend` where the export's parity check failed it, unless `allow_failed`."""
        if self.parity_on(backend) == "failed" and not allow_failed:
            raise ArtifactError(
                f"{self.root} failed its parity check against eager PyTorch at export ({backend}): its outputs are "
                "not trustworthy. Re-export it, or pass --allow-failed-parity to use it anyway"
            )

    def check_graph_facts(self, facts: dict[str, int], source: str) -> None:
        """Raise ArtifactError where the graphs (`facts`, read from `source`) contradict the manifest.

        The manifest is not covered by the sha256 sums; the graphs are. A manifest edited, or copied
        from another export, must not make the runtime misreport or overrun the graphs.
        """
        claimed = {
            "keep": self.keep,
            "prompt_image_tokens": self.prompt_image_tokens,
            "pixel_values_shape": self.pixel_values_shape,
            "position_rows": self.position_rows,
            "hidden_size": self.text.hidden_size,
            "vocab_size": self.text.vocab_size,
            "num_layers": self.text.num_layers,
            "num_kv_heads": self.text.num_kv_heads,
            "head_dim": self.text.head_dim,
            "prune_layer": self.prune_layer if self.keep < self.prompt_image_tokens else None,
            "max_seq_len": self.text.max_seq_len,
        }
        wrong = [
            f"{name}: manifest {claimed[name]}, graphs {found}"
            for name, found in facts.items()
            if name in claimed and found is not None and found != claimed[name]
        ]
        if wrong:
            raise ArtifactError(
                f"{self.root}: the manifest contradicts the {source} graphs ({'; '.join(wrong)}); "
                "it was edited or belongs to another export: re-export the model"
            )

    @property
    def family(self) -> str:
        """The model family (`runtime.families`), e.g. "llava" or "qwen2_vl"."""
        return _section_field(self.manifest, "model", "family", str)

    @property
    def pixel_values_shape(self) -> list[int]:
        """The shape of the vision encoder's input (the family's)."""
        shape = _section_field(self.manifest, "geometry", "pixel_values_shape", list)
        if not shape or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape):
            raise ArtifactError(f"{MANIFEST}: geometry.pixel_values_shape must be a list of integers, got {shape!r}")
        return shape

    @property
    def position_rows(self) -> int:
        """Rows of the position ids: 1 (RoPE) or 3 (M-RoPE)."""
        return _section_field(self.manifest, "geometry", "position_rows", int)

    @property
    def prune_layer(self) -> int:
        return _section_field(self.manifest, "pruning", "prune_layer", int)

    @property
    def method(self) -> str:
        """The token-selection method, e.g. "vlm-pruner", "fastv", "dart", "divprune"."""
        return _section_field(self.manifest, "pruning", "method", str)

    @property
    def selection_graph(self) -> str:
        """The graph that selects the image tokens, one of `SELECTION_GRAPHS`: "prefill" (at the
        pruning layer) or "vision_encoder" (on its output; the prompt then holds R image tokens)."""
        graph = _section_field(self.manifest, "pruning", "graph", str)
        if graph not in SELECTION_GRAPHS:
            raise ArtifactError(f"{MANIFEST}: pruning.graph must be one of {', '.join(SELECTION_GRAPHS)}, got {graph!r}")
        return graph

    @property
    def prompt_image_tokens(self) -> int:
        """Image tokens in the prompt, fed to the language model: R when the vision encoder graph
        selects them, else N."""
        return self.keep if self.selection_graph == "vision_encoder" else self.num_image_tokens

    @property
    def min_text_after_image(self) -> int:
        """Prompt tokens the selection needs after the image (DART's text pivots; 0 for most methods)."""
        return _section_field(self.manifest, "pruning", "min_text_after_image", int)


def load_artifact(root: str | os.PathLike, *, verify: bool = True) -> Artifact:
    """Read and check the artifact folder `root`.

    Args:
        root: the folder holding manifest.json.
        verify: check the size and sha256 of every file the manifest lists (reads every byte;
            switch off only for a folder checked before in the same job).
    Raises:
        FileNotFoundError: no folder, no manifest.json, or a listed file is missing.
        ArtifactError: unknown format version, malformed manifest, or a file whose size or sha256
            differs from the manifest (the message names the file).
    """
    root = Path(root)
    manifest_path = root / MANIFEST
    if root.is_file():
        raise ArtifactError(f"{root} is a file; give the artifact folder (the one holding {MANIFEST})")
    if not root.is_dir():
        raise FileNotFoundError(f"artifact folder {root} does not exist; export one with `python -m export`")
    _refuse_escaping_links(root)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: {root} is not an artifact folder (or a partial export)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path} must hold a JSON object, got {type(manifest).__name__}")

    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format_version {version!r}; this runtime reads format_version {FORMAT_VERSION}. "
            "Re-export the model with this version of the toolchain."
        )

    files = _field(manifest, "files", dict)
    for relative in files:
        _check_relative(relative, manifest_path)
    if TOKENIZER_FILE not in files:
        raise ArtifactError(f"{manifest_path} lists no {TOKENIZER_FILE}")
    backends = tuple(name for name, needed in BACKEND_FILES.items() if all(f in files for f in needed))
    if not backends:
        raise ArtifactError(f"{manifest_path} lists the files of no backend ({', '.join(BACKEND_FILES)})")
    for relative, entry in files.items():
        _check_file(root, relative, entry, verify=verify)

    text = _field(manifest, "text", dict)
    eos_ids = token_id_set(text.get("eos_token_id"))
    artifact = Artifact(
        root=root,
        manifest=manifest,
        text=TextInfo(
            num_layers=_field(text, "num_layers", int, "text"),
            num_kv_heads=_field(text, "num_kv_heads", int, "text"),
            head_dim=_field(text, "head_dim", int, "text"),
            hidden_size=_field(text, "hidden_size", int, "text"),
            vocab_size=_field(text, "vocab_size", int, "text"),
            image_token_id=_field(text, "image_token_id", int, "text"),
            eos_token_ids=eos_ids,
            bos_token_id=text.get("bos_token_id"),
            max_seq_len=_field(text, "max_seq_len", int, "text"),
        ),
        num_image_tokens=_section_field(manifest, "geometry", "num_image_tokens", int),
        keep=_section_field(manifest, "pruning", "keep", int),
        prompt_template=_field(manifest, "prompt_template", str),
        backends=backends,
        parity=_parity_status(manifest),
    )
    if artifact.vision_quantization != VISION_QUANTIZATIONS[0] and "onnx" in backends:
        raise ArtifactError(f"{manifest_path}: an {artifact.vision_quantization} vision tower is ExecuTorch's, yet ONNX files are listed")
    return artifact


def token_id_set(ids: int | list[int] | None) -> frozenset[int]:
    """A generation config's token id field (one id, a list of ids, or none) as a set."""
    return frozenset([] if ids is None else [ids] if isinstance(ids, int) else ids)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parity_status(manifest: dict[str, Any]) -> str:
    parity = manifest.get("parity")
    status = parity.get("status") if isinstance(parity, dict) else None
    if status not in PARITY_STATES:
        raise ArtifactError(f"{MANIFEST}: parity.status must be one of {', '.join(PARITY_STATES)}, got {parity!r}")
    return "interrupted" if status == "pending" else status


def _refuse_escaping_links(root: Path) -> None:
    """Raise ArtifactError for a symbolic link inside `root` that leads out of it: the runtime would
    read (and the sha256 check vouch for) a file that is not part of the artifact."""
    inside = root.resolve()
    for folder, subfolders, files in os.walk(root):
        for name in (*subfolders, *files):
            path = Path(folder, name)
            if not path.is_symlink():
                continue
            target = Path(os.path.realpath(path))  # realpath, unlike resolve, does not raise on a loop
            if not target.is_relative_to(inside):
                raise ArtifactError(f"{path} is a symbolic link to {target}, outside the artifact folder")


def _check_file(root: Path, relative: str, entry: Any, *, verify: bool) -> None:
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed in {MANIFEST} but missing: the artifact is incomplete, re-export it")
    well_formed = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
    if not well_formed:
        raise ArtifactError(f"{MANIFEST}: files[{relative!r}] must be {{bytes: int, sha256: str}}, got {entry!r}")
    if not verify:
        return
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ArtifactError(f"{path} is corrupted: {size} bytes, the manifest says {entry['bytes']}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ArtifactError(f"{path} is corrupted: sha256 {digest}, the manifest says {entry['sha256']}")


def _check_relative(relative: str, manifest_path: Path) -> None:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ArtifactError(f"{manifest_path}: file entry {relative!r} is not a path inside the artifact folder")


def _section_field(manifest: dict[str, Any], section: str, key: str, kind: type) -> Any:
    """`manifest[section][key]`, checked to be there and of type `kind`."""
    return _field(_field(manifest, section, dict), key, kind, section)


def _field(mapping: dict[str, Any], key: str, kind: type, section: str | None = None) -> Any:
    name = f"{section}.{key}" if section else key
    if key not in mapping:
        raise ArtifactError(f"{MANIFEST} misses the field {name}")
    value = mapping[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ArtifactError(f"{MANIFEST}: {name} must be {kind.__name__}, got {value!r}")
    return value
