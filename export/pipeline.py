"""The export pipeline: one model at one keep count -> one artifact folder (export/ARTIFACTS.md).

    prepare ─> load ─> wrap ─> trace ─> onnx ─> executorch ─> check ─> processor ─> finalize
      │         │       │        │        │          │           │          │            │
    staging  weights  four    torch.   four .onnx  one .pte,  contract  tokenizer,   manifest,
    folder            graphs  export   files       4 methods  checks    image proc.  moved in place

Stages run in this order (`run`), or one by one: each returns the pipeline, refuses to run before
the stages it needs, logs its start and duration, and records its seconds. The onnx and
executorch stages run only for the configured backends. The artifact is written into a staging
folder next to its destination and moved in place by `finalize`, so that a failed run never
leaves a half-written artifact behind, and a new export of the same model and keep replaces the
old one whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.export import ExportedProgram

from export.checks import check_onnx, check_program, check_pte
from export.config import Backend, ExportConfig
from export.executorch import save_pte
from export.graphs import GraphSpec, build_graphs, find_graph
from export.manifest import build_manifest, file_entries, write_manifest
from export.onnx import save_onnx
from models import LoadedModel, load_model, resolve_checkpoint

logger = logging.getLogger(__name__)

# Graphs with more weight bytes than this keep their weights in a .data file beside the .onnx
# (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
ONNX_DIR = "onnx"
PTE_PATH = "executorch/model.pte"
PROCESSOR_DIR = "processor"


class ExportPipeline:
    """Staged export of `config.model` at `config.keep_count` image tokens.

    Attributes:
        config: what to export.
        artifact_dir: where the artifact ends up, `output_dir/<model>/keep<R>`.
        export_seconds: {stage: seconds} of the stages run so far.
        checkpoint: the folder the weights come from, after `load`.
        loaded: the model and processor, after `load`.
        graphs: the four graphs, after `wrap`.
        programs: {graph name: ExportedProgram}, after `trace`.
    """

    def __init__(self, config: ExportConfig):
        self.config = config
        self.artifact_dir = config.artifact_dir
        self.export_seconds: dict[str, float] = {}
        self.checkpoint: Path | None = None
        self.loaded: LoadedModel | None = None
        self.graphs: tuple[GraphSpec, ...] | None = None
        self.programs: dict[str, ExportedProgram] | None = None
        self._staging: Path | None = None
        self._written: set[Backend] = set()

    def run(self) -> Path:
        """Every stage, in order; returns the artifact folder. A failure removes the staging folder."""
        try:
            self.prepare().load().wrap().trace()
            if self.config.wants(Backend.ONNX):
                self.to_onnx()
            if self.config.wants(Backend.EXECUTORCH):
                self.to_executorch()
            return self.check().save_processor().finalize()
        except BaseException:
            self.discard()
            raise

    def prepare(self) -> ExportPipeline:
        """Create the staging folder beside the artifact folder; fail early on an unwritable output dir."""
        parent = self.artifact_dir.parent
        staging = parent / f".{self.artifact_dir.name}-{uuid.uuid4().hex[:8]}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as error:
            raise PermissionError(
                f"cannot write the artifact under {self.config.output_dir} ({error.strerror or error}); "
                "choose another folder with --output-dir"
            ) from None
        self._staging = staging
        logger.info("exporting %s keep %d -> %s", self.config.model, self.config.keep_count, self.artifact_dir)
        return self

    def load(self) -> ExportPipeline:
        """Find and load the checkpoint in float32 (tiny-llava: built on first use)."""
        self._require(self._staging is not None, "prepare")
        with self._stage("load"):
            self.checkpoint = resolve_checkpoint(self.config.model, self.config.model_path)
            self.loaded = load_model(self.config.model, self.checkpoint, dtype=torch.float32)
            # Export traces without autograd; parameters that require grad make torch.export's
            # decomposition of `scan` build a backward graph, which fails.
            self.loaded.model.requires_grad_(False)
        return self

    def wrap(self) -> ExportPipeline:
        """The four graph modules with example inputs and dynamic dimensions."""
        self._require(self.loaded is not None, "load")
        with self._stage("wrap"):
            self.graphs = build_graphs(
                self.loaded.model,
                self.loaded.spec,
                keep=self.config.keep_count,
                max_seq_len=self.config.seq_len_limit,
                pruner_config=self.config.pruner,
            )
        return self

    def trace(self) -> ExportPipeline:
        """torch.export (non-strict) of each graph; checks that only a pruned prefill holds scans."""
        self._require(self.graphs is not None, "wrap")
        self.programs = {}
        for graph in self.graphs:
            with self._stage(f"torch_export.{graph.name}"), torch.no_grad():
                program = torch.export.export(
                    graph.module, graph.example_inputs, dynamic_shapes=graph.dynamic_shapes, strict=False
                )
            check_program(program, graph, pruned=self.pruned)
            self.programs[graph.name] = program
        return self

    def to_onnx(self) -> ExportPipeline:
        """One .onnx per graph, under the contract's input and output names."""
        self._require(self.programs is not None, "trace")
        for graph in self.graphs:
            program = self.programs[graph.name]
            with self._stage(f"onnx.{graph.name}"):
                save_onnx(
                    program,
                    self._staging / ONNX_DIR / f"{graph.name}.onnx",
                    external_data=_weight_bytes(program) > EXTERNAL_DATA_BYTES,
                    input_names=graph.input_names,
                    output_names=graph.output_names,
                    dim_names=graph.dim_names(),
                )
        self._written.add(Backend.ONNX)
        return self

    def to_executorch(self) -> ExportPipeline:
        """One .pte with the four graphs as methods, lowered to XNNPACK where it has kernels."""
        self._require(self.programs is not None, "trace")
        with self._stage("executorch"):
            save_pte({graph.name: self.programs[graph.name] for graph in self.graphs}, self._staging / PTE_PATH)
        self._written.add(Backend.EXECUTORCH)
        return self

    def check(self) -> ExportPipeline:
        """The written files against the contract (see `export.checks`)."""
        self._require(bool(self._written), "to_onnx or to_executorch")
        keep = self.config.keep_count
        with self._stage("check"):
            if Backend.ONNX in self._written:
                for graph in self.graphs:
                    check_onnx(self._staging / ONNX_DIR / f"{graph.name}.onnx", graph, keep=keep, pruned=self.pruned)
            if Backend.EXECUTORCH in self._written:
                check_pte(self._staging / PTE_PATH, self.graphs, keep=keep)
        return self

    def save_processor(self) -> ExportPipeline:
        """Tokenizer, image processor and chat template, so that the runtime needs no checkpoint."""
        self._require(self.loaded is not None, "load")
        with self._stage("processor"):
            self.loaded.processor.save_pretrained(self._staging / PROCESSOR_DIR)
        return self

    def finalize(self) -> Path:
        """Write manifest.json (every file's size and sha256) and move the artifact in place."""
        self._require(bool(self._written), "to_onnx or to_executorch")
        self._require(self.loaded is not None, "load")
        with self._stage("hash"):
            files = file_entries(self._staging)
        manifest = build_manifest(
            spec=self.loaded.spec,
            model=self.loaded.model,
            processor=self.loaded.processor,
            checkpoint=self.checkpoint,
            keep=self.config.keep_count,
            pruner_config=self.config.pruner,
            max_seq_len=self.config.seq_len_limit,
            vision_layers=len(find_graph(self.graphs, "vision_encoder").module.layers),
            files=files,
            export_seconds=self.export_seconds,
        )
        write_manifest(self._staging, manifest)
        if self.artifact_dir.exists():
            shutil.rmtree(self.artifact_dir)
        os.replace(self._staging, self.artifact_dir)
        self._staging = None
        logger.info("artifact written to %s", self.artifact_dir)
        return self.artifact_dir

    def discard(self) -> None:
        """Remove the staging folder of an unfinished run."""
        if self._staging is not None and self._staging.exists():
            shutil.rmtree(self._staging)
        self._staging = None

    @property
    def pruned(self) -> bool:
        return self.config.keep_count < self.config.spec.num_image_tokens

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        logger.info("%s ...", name)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.export_seconds[name] = seconds
        logger.info("%s done in %.1f s", name, seconds)

    @staticmethod
    def _require(done: bool, stage: str) -> None:
        if not done:
            raise RuntimeError(f"run the {stage} stage first")


def _weight_bytes(program: ExportedProgram) -> int:
    tensors = [*program.state_dict.values(), *program.constants.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
