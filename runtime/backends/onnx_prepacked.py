"""The language model's ONNX graphs with their weights prepacked once per machine, in one file both map.

ONNX Runtime prepacks the weights of MatMulNBits (and MatMul, Gemm) into its kernels' layouts when a
session opens (seconds at 7B), in memory of that session alone: prefill and decode held two copies
of the language model. A session that saves its optimized graph with `session.save_external_
prepacked_constant_initializers` writes those layouts into the graph's external data (ONNX Runtime
>= 1.21), and a session opening that graph maps them from the file instead of packing them. Here
prefill and decode are saved that way once, into a cache folder per artifact, ONNX Runtime version
and CPU, and their blobs merged into one file holding each distinct blob once: both sessions map the
same pages, one copy of the language model in memory (file-backed: clean pages the kernel can drop
and read again, instead of swapping), and a session opens without packing. The layouts depend on
the CPU's kernels, hence the CPU in the cache key; the bytes are ONNX Runtime's own, unchanged.

Prefill and decode so opened compute bit for bit what they compute from the artifact, in both ONNX
profiles (tested). The vision encoder is not cached: its weights live in one graph only, and its
Gemms opened from a saved graph differ from the artifact's in the last bits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from runtime.artifact import Artifact, ArtifactError
from runtime.contract import ONNX_DIR, ONNX_WEIGHTS_FILE, onnx_file

if TYPE_CHECKING:
    import onnx

try:
    import onnxruntime as ort
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the onnx backend needs onnxruntime: `pip install onnxruntime==1.31.1`") from error

logger = logging.getLogger(__name__)

# Where the prepacked graphs live: this variable's folder, else ~/.cache/vlm-pruner; set to an
# empty string, no cache (each session prepacks its own copy, as ONNX Runtime does by default).
CACHE_ENV = "VLM_PRUNER_CACHE"
PREPACKED_DIR = "onnx-prepacked"
DATA_FILE = "weights.data"  # the merged blobs, in each cache folder
_DONE = "done.json"  # written last: a folder without it is incomplete and never read
# The graphs opened from the cache: the two that run the language model.
CACHED_GRAPHS = ("prefill", "decode")
# Blobs of at least a page start on a page, so that ONNX Runtime maps them instead of reading them;
# every other blob on 64 bytes: the int8-compute layouts of MatMulNBits (accuracy level 4) place
# their parts at 32- and 64-byte boundaries of the buffer they were packed in (MLAS, qnbitgemm.h:
# MlasQNBitQuantBBlkSumAlignment), so read back at another alignment they are read wrong. ONNX
# Runtime 1.31.1's own saved file does not align them (its graph alone gives other tokens).
_PAGE = 4096
_BLOB_ALIGNMENT = 64
_SAVE_PREPACKED = "session.save_external_prepacked_constant_initializers"
_SAVED_DATA = "session.optimized_model_external_initializers_file_name"


def cache_root() -> Path | None:
    """The folder of every artifact's prepacked graphs, None when the cache is turned off (`CACHE_ENV`)."""
    value = os.environ.get(CACHE_ENV)
    if value == "":
        return None
    return Path(value) if value else Path.home() / ".cache" / "vlm-pruner"


def prepacked_graphs(artifact: Artifact, root: Path | None = None) -> dict[str, Path]:
    """{graph: its prepacked ONNX file} of the `CACHED_GRAPHS` of `artifact` on this machine, made
    now if missing; empty when the cache is off or cannot be written (then the artifact's own
    graphs serve, each session prepacking its own copy).

    Args:
        root: the cache's folder; default `cache_root()`.
    """
    root = cache_root() if root is None else root
    if root is None:
        return {}
    folder = root / PREPACKED_DIR / _cache_key(artifact)
    if not (folder / _DONE).exists():
        try:
            _build(artifact, folder)
        except (OSError, ImportError) as error:  # ImportError: no `onnx` package to rewrite the graphs with
            logger.warning("ONNX graphs not prepacked into %s (%s): each session packs its own weights", folder, error)
            return {}
    return {graph: folder / f"{graph}.onnx" for graph in CACHED_GRAPHS}


def _cache_key(artifact: Artifact) -> str:
    """A digest of what the prepacked bytes depend on: the graphs and weights (their sha256 in the
    manifest), ONNX Runtime's version and the CPU's kernels (machine and feature flags)."""
    files = artifact.manifest["files"]
    sources = [onnx_file(graph) for graph in CACHED_GRAPHS] + [f"{ONNX_DIR}/{ONNX_WEIGHTS_FILE}"]
    facts = {
        "files": {name: files[name]["sha256"] for name in sources},
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "cpu": _cpu_flags(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _cpu_flags() -> str:
    """The CPU's feature flags as the kernel lists them (Linux), else the processor's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _build(artifact: Artifact, folder: Path) -> None:
    """Save each graph optimized with its prepacked weights, merge their data into one file, and
    move the result to `folder` (built beside it, so nothing half-written is ever read)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        logger.info("prepacking the ONNX graphs' weights for this machine into %s (once)", folder)
        for graph in CACHED_GRAPHS:
            _save_prepacked(artifact.path(onnx_file(graph)), staging / f"{graph}.onnx")
        _merge(staging, CACHED_GRAPHS)
        (staging / _DONE).write_text(json.dumps({"artifact": str(artifact.root)}))
        if folder.exists() and not (folder / _DONE).exists():
            shutil.rmtree(folder)  # not a build of this code: a finished build has its mark
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / _DONE).exists():  # not another process's finished build
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_prepacked(source: Path, target: Path) -> None:
    """Open `source` in ONNX Runtime, which writes it optimized to `target`, its initializers and
    their prepacked layouts in `target`'s own data file beside it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry(_SAVED_DATA, f"{target.stem}.data")  # relative to the graph
    options.add_session_config_entry(_SAVE_PREPACKED, "1")
    open_session(source, options)


def open_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session of the graph at `path`.

    Raises:
        ArtifactError: ONNX Runtime cannot load it.
    """
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types, all of them unusable files
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {error}") from None


def _merge(folder: Path, graphs: tuple[str, ...]) -> None:
    """Rewrite the graphs in `folder` to read every external tensor and prepacked blob from one
    `DATA_FILE`, each distinct blob (by sha256) stored once; their own data files are removed."""
    import onnx  # the only use of the onnx package at run time: without it, no cache

    written: dict[bytes, int] = {}
    with open(folder / DATA_FILE, "wb") as out:

        def store(blob: bytes) -> int:
            """The offset of `blob` in the merged file, appended unless already there."""
            digest = hashlib.sha256(blob).digest() + len(blob).to_bytes(8, "little")
            if digest not in written:
                out.write(bytes(-out.tell() % (_PAGE if len(blob) >= _PAGE else _BLOB_ALIGNMENT)))
                written[digest] = out.tell()
                out.write(blob)
            return written[digest]

        for graph in graphs:
            path = folder / f"{graph}.onnx"
            model = onnx.load(str(path), load_external_data=False)
            source = folder / f"{graph}.data"
            tensors = [tensor for tensor in _all_tensors(model.graph) if tensor.data_location == onnx.TensorProto.EXTERNAL]
            if tensors:
                # Read blob by blob, not mapped: a mapping would make the whole file resident here.
                with open(source, "rb") as data:
                    for tensor in tensors:
                        _relocate(tensor, data, store)
            source.unlink(missing_ok=True)
            onnx.save(model, str(path))


def _relocate(tensor: onnx.TensorProto, data: BinaryIO, store: Callable[[bytes], int]) -> None:
    """Point `tensor`'s external data and its prepacked blobs (`key|offset;length;checksum|...`,
    ONNX Runtime's format) at their copies in the merged file."""

    def moved(offset: int, length: int) -> int:
        data.seek(offset)
        return store(data.read(length))

    entries = {entry.key: entry.value for entry in tensor.external_data}
    length = int(entries["length"])
    relocated = {"location": DATA_FILE, "offset": str(moved(int(entries.get("offset", 0)), length)), "length": str(length)}
    for key, value in entries.items():
        if key.startswith("prepacked"):
            name, *blobs = value.split("|")
            parts = []
            for blob in blobs:
                start, size, checksum = blob.split(";")
                parts.append(f"{moved(int(start), int(size))};{size};{checksum}")
            relocated[key] = "|".join([name, *parts])
    del tensor.external_data[:]
    for key, value in relocated.items():
        tensor.external_data.add(key=key, value=value)


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers and tensor attributes of `graph` and of every subgraph in it (Scan, If, Loop)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)
