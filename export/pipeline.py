"""The export pipeline: one model at one keep count -> one artifact folder (export/ARTIFACTS.md).

    prepare ─> load ─> wrap ─> trace ─> onnx ─> executorch ─> check ─> processor ─> finalize
      │         │       │        │        │          │           │          │            │
    staging  weights, four    torch.   .onnx      trace the   contract  tokenizer,   manifest
    folder   block by graphs  export   graphs,    weighted    checks    image proc.  (seconds and
             block,   (hollow of the   one shared model, one                         peak memory per
             quantized model)  hollow  weights    .pte, 4                            stage), moved
                               model   file       methods                            in place

Memory is what limits a real-size export (float32 LLaVA-1.5-7B is 26.3 GiB), so the weights exist
once: `load` materializes them block by block, quantizing each decoder layer before the next one
takes memory (`models.materialize`, `models.quantize`). The ONNX graphs are traced from a *hollow*
twin of the model, whose storage is allocated but never written (no resident memory), and get
their weights from the materialized model tensor by tensor, each stored once in a data file that
the graphs share (`export.onnx_weights`). ExecuTorch traces the materialized model itself.

Stages run in this order (`run`), or one by one: each returns the pipeline, refuses to run before
the stages it needs, logs its start and duration, and records its seconds and the process's peak
resident memory so far. The onnx and executorch stages run only for the configured backends. The
artifact is written into a staging folder next to its destination and moved in place by
`finalize`, so that a failed run never leaves a half-written artifact behind, and a new export of
the same model and keep replaces the old one whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.export import ExportedProgram
from transformers import LlavaForConditionalGeneration

from export.checks import check_onnx, check_program, check_pte
from export.config import Backend, ExportConfig
from export.executorch import save_pte
from export.graphs import GraphSpec, build_graphs, find_graph
from export.manifest import build_manifest, file_entries, write_manifest
from export.memory import check_fits, describe_misfit
from export.onnx import save_onnx
from export.onnx_weights import WeightFile, attach_weights
from models import LoadedModel, load_for_export
from runtime.measure import peak_rss_mib

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
PTE_PATH = "executorch/model.pte"
PROCESSOR_DIR = "processor"


class ExportPipeline:
    """Staged export of `config.model` at `config.keep_count` image tokens.

    Attributes:
        config: what to export.
        artifact_dir: where the artifact ends up, `output_dir/<model>/keep<R>`.
        export_seconds: {stage: seconds} of the stages run so far.
        loaded: the materialized (quantized) model and the processor, after `load`.
        hollow: the same architecture with allocated but unwritten storage, after `load`.
        graphs: the four graphs of the hollow model, after `wrap`.
        programs: {graph name: ExportedProgram} of the hollow graphs, after `trace`.
        peak_rss_mib: {stage: peak resident memory of the process so far, MiB}.
    """

    def __init__(self, config: ExportConfig):
        self.config = config
        self.artifact_dir = config.artifact_dir
        self.export_seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}
        self.loaded: LoadedModel | None = None
        self.hollow: LlavaForConditionalGeneration | None = None
        self.graphs: tuple[GraphSpec, ...] | None = None
        self.programs: dict[str, ExportedProgram] | None = None
        self._staging: Path | None = None
        self._written: set[Backend] = set()

    def run(self) -> Path:
        """Every stage, in order; returns the artifact folder. A failure removes the staging folder."""
        try:
            self.prepare().load()
            if self.config.wants(Backend.ONNX):
                self.wrap().trace().to_onnx()
            if self.config.wants(Backend.EXECUTORCH):
                self.to_executorch()
            return self.check().save_processor().finalize()
        except BaseException:
            self.discard()
            raise

    def prepare(self) -> ExportPipeline:
        """Create the staging folder beside the artifact folder; fail early on an unwritable output dir
        or when a backend's export would not fit this machine's memory (`export.memory`)."""
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
        misfits = check_fits(self.config.spec, self.config.quantization, [b.value for b in self.config.backends])
        if misfits:
            shutil.rmtree(staging)
            raise MemoryError(
                describe_misfit(self.config.spec, self.config.quantization, misfits)
                + "; export the other backends here (--backends), or this one on a larger machine"
            )
        self._staging = staging
        logger.info("exporting %s keep %d -> %s", self.config.model, self.config.keep_count, self.artifact_dir)
        return self

    def load(self) -> ExportPipeline:
        """Materialize the weights block by block (checkpoint or random), quantized; build the hollow twin."""
        self._require(self._staging is not None, "prepare")
        config = self.config
        with self._stage("load"):
            self.loaded = load_for_export(
                config.model,
                quantization=config.quantization,
                seed=config.seed if config.random_weights else None,
                model_path=config.model_path,
            )
            with torch.device("meta"):
                hollow = LlavaForConditionalGeneration(self.loaded.model.config).float()
            self.hollow = hollow.to_empty(device="cpu").eval().requires_grad_(False)
        return self

    def wrap(self) -> ExportPipeline:
        """The four graph modules of the hollow model with example inputs and dynamic dimensions."""
        self._require(self.hollow is not None, "load")
        with self._stage("wrap"):
            self.graphs = self._graphs(self.hollow)
        return self

    def trace(self) -> ExportPipeline:
        """torch.export (non-strict) of each hollow graph; checks that only a pruned prefill holds scans."""
        self._require(self.graphs is not None, "wrap")
        self.programs = {}
        for graph in self.graphs:
            with self._stage(f"torch_export.{graph.name}"):
                self.programs[graph.name] = _export(graph)
            check_program(self.programs[graph.name], graph, pruned=self.pruned)
        return self

    def to_onnx(self) -> ExportPipeline:
        """One .onnx per graph under the contract's names; the weights in one shared data file."""
        self._require(self.programs is not None, "trace")
        weights = _tensors(self.loaded.model)
        canonical = {id(tensor): name for name, tensor in _named_tensors(self.hollow)}
        with WeightFile(self._staging / ONNX_DIR) as store:
            for graph in self.graphs:
                names = {name: canonical[id(tensor)] for name, tensor in _named_tensors(graph.module)}
                with self._stage(f"onnx.{graph.name}"):
                    save_onnx(
                        self.programs[graph.name],
                        self._staging / ONNX_DIR / f"{graph.name}.onnx",
                        weights=partial(attach_weights, weights=weights, names=names, store=store),
                        input_names=graph.input_names,
                        output_names=graph.output_names,
                        dim_names=graph.dim_names(),
                        metadata=graph.metadata,
                    )
        self.programs = None
        self._written.add(Backend.ONNX)
        return self

    def to_executorch(self) -> ExportPipeline:
        """Trace the materialized model's four graphs; one .pte with them as methods, lowered to XNNPACK."""
        self._require(self.loaded is not None, "load")
        graphs = self._graphs(self.loaded.model)
        programs = {}
        for graph in graphs:
            with self._stage(f"executorch.torch_export.{graph.name}"):
                programs[graph.name] = _export(graph)
            check_program(programs[graph.name], graph, pruned=self.pruned)
        with self._stage("executorch.lower"):
            save_pte(programs, self._staging / PTE_PATH)
        if self.graphs is None:
            self.graphs = graphs
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
            checkpoint=self.loaded.checkpoint,
            seed=self.config.seed if self.config.random_weights else None,
            quantization=self.config.quantization,
            keep=self.config.keep_count,
            pruner_config=self.config.pruner,
            max_seq_len=self.config.seq_len_limit,
            vision_layers=len(find_graph(self.graphs, "vision_encoder").module.layers),
            files=files,
            export_seconds=self.export_seconds,
            peak_rss_mib=self.peak_rss_mib,
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
        self.peak_rss_mib[name] = peak_rss_mib()
        logger.info("%s done in %.1f s (peak memory so far %.0f MiB)", name, seconds, self.peak_rss_mib[name])

    def _graphs(self, model: LlavaForConditionalGeneration) -> tuple[GraphSpec, ...]:
        return build_graphs(
            model,
            self.config.spec,
            keep=self.config.keep_count,
            max_seq_len=self.config.seq_len_limit,
            pruner_config=self.config.pruner,
        )

    @staticmethod
    def _require(done: bool, stage: str) -> None:
        if not done:
            raise RuntimeError(f"run the {stage} stage first")


def _export(graph: GraphSpec) -> ExportedProgram:
    with torch.no_grad():
        return torch.export.export(graph.module, graph.example_inputs, dynamic_shapes=graph.dynamic_shapes, strict=False)


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every (name, parameter or buffer) of `module`, shared ones under each of their names."""
    return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(_named_tensors(model))
