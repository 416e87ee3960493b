"""The export pipeline: one model at one keep count -> one artifact folder (export/ARTIFACTS.md).

    prepare ─> load ─> wrap ─> trace ─> onnx ─> executorch ─> check ─> processor ─> finalize ─> parity
      │         │       │        │        │          │           │          │            │          │
    lock,    weights, four    torch.   .onnx      trace the   contract  tokenizer,   manifest    the check
    staging  block by graphs  export   graphs,    weighted    checks    image proc.  (seconds,   given to
    folder   block,   (hollow of the   one shared model's                            memory per  `run`, on
             quantized model)  hollow  weights    .pte methods,                      stage),     the artifact
                               model   file       in-place KV                        moved in    in place;
                                                                                     place       report in
                                                                                                 manifest

Memory is what limits a real-size export (float32 LLaVA-1.5-7B is 26.3 GiB), so the weights exist
once: `load` materializes them block by block, quantizing each decoder layer before the next one
takes memory (`models.materialize`, `models.quantize`). The ONNX graphs are traced from a *hollow*
twin of the model, whose storage is allocated but never written (no resident memory), and get
their weights from the materialized model tensor by tensor, each stored once in a data file that
the graphs share (`export.onnx_weights`). ExecuTorch traces the materialized model itself.

Stages run in this order (`run`), or one by one: each returns the pipeline, refuses to run before
the stages it needs, logs its start and duration, and records its seconds and the process's peak
resident memory so far; a stage that runs longer than `HEARTBEAT_SECONDS` says so at that interval.
The onnx and executorch stages run only for the configured backends.

Faults (`export.staging`): the run holds a lock on its destination from `prepare` to its end, so a
second export of the same model and keep fails at once. The artifact is written into a staging
folder next to its destination and moved in place by `finalize`, so that a failed, interrupted or
killed run never leaves a half-written artifact behind, and a new export of the same model and keep
replaces the old one whole (whichever backends the old one held: `prepare` says what is dropped).
On every exit Python sees (an exception, Ctrl-C, SIGTERM, SIGHUP through `runtime.cli`), `run`
removes the staging folder; a killed run leaves it, and the next export names it.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from transformers import PreTrainedModel

from export.checks import check_onnx, check_program, check_pte
from export.config import Backend, ExportConfig
from export.executorch import runner_metadata, save_pte
from export.graphs import GraphSpec, build_graphs, build_pte_graphs
from export.manifest import ParityStatus, build_manifest, file_entries, update_manifest, write_manifest
from export.memory import OWN_PROCESS_BYTES, check_fits, describe_misfit, estimated_peak_bytes, lowering_layers_per_method
from export.onnx import save_onnx
from export.onnx_weights import WeightFile, attach_weights
from export.staging import DestinationBusy, DestinationLock, clean_command, find_leftovers, replace_folder, staging_path
from models import LoadedModel, load_for_export
from runtime.cli import is_verbose, output_configured, raise_if_interrupted
from runtime.contract import MANIFEST, ONNX_DIR, PROCESSOR_DIR, PTE_PATH, PTE_SELECTION_METHODS, onnx_file
from runtime.measure import peak_rss_mib

logger = logging.getLogger(__name__)

# The folder of each backend's files in an artifact.
BACKEND_DIRS = {Backend.ONNX: ONNX_DIR, Backend.EXECUTORCH: PTE_PATH.split("/")[0]}
HEARTBEAT_SECONDS = 30.0

# The parity check of an artifact in place: the pipeline in, `runtime.parity.ParityReport.to_dict()` out.
ParityCheck = Callable[["ExportPipeline"], dict[str, Any]]


class ExportPipeline:
    """Staged export of `config.model` at `config.keep_count` image tokens.

    Attributes:
        config: what to export.
        artifact_dir: where the artifact ends up, `output_dir/<model>/keep<R>`.
        export_seconds: {stage: seconds} of the stages run so far.
        loaded: the materialized (quantized) model and the processor, after `load`.
        hollow: the same architecture with allocated but unwritten storage, after `load`.
        graphs: the four graphs of the hollow model, after `wrap`.
        pte_graphs: the .pte's methods of the materialized model, after `to_executorch`.
        programs: {graph name: ExportedProgram} of the hollow graphs, after `trace`.
        peak_rss_mib: {stage: peak resident memory of the process so far, MiB}.
    """

    def __init__(self, config: ExportConfig):
        self.config = config
        self.artifact_dir = config.artifact_dir
        self.export_seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}
        self.loaded: LoadedModel | None = None
        self.hollow: PreTrainedModel | None = None
        self.graphs: tuple[GraphSpec, ...] | None = None
        self.pte_graphs: tuple[GraphSpec, ...] | None = None
        self.programs: dict[str, ExportedProgram] | None = None
        self._lock = DestinationLock(self.artifact_dir)
        self._staging: Path | None = None
        self._written: set[Backend] = set()

    def run(self, parity: ParityCheck | None = None, *, keep_model: bool = True) -> Path:
        """Every stage, in order, then `parity` on the artifact in place (None: the check is skipped);
        returns the artifact folder. However it ends, the staging folder is removed and the lock
        released (`close`). `keep_model=False`: nothing after `run` reads `loaded`'s weights, so an
        ExecuTorch-only export lowered in a process of its own without `parity` reads none here."""
        try:
            self.prepare()
            own_process = self.config.wants(Backend.EXECUTORCH) and self.lowers_in_own_process
            if own_process:  # before this process loads the model (`to_executorch`)
                self.to_executorch()
            # Past an own-process lowering, only ONNX, the parity check and the caller read weights.
            self.load(weights=keep_model or parity is not None or self.config.wants(Backend.ONNX) or not own_process)
            if self.config.wants(Backend.ONNX):
                self.wrap().trace().to_onnx()
            if self.config.wants(Backend.EXECUTORCH) and not own_process:
                self.to_executorch()
            self.check().save_processor().finalize(parity="skipped" if parity is None else "pending")
            if parity is None:
                logger.info("parity check skipped")
            else:
                self.check_parity(parity)
            return self.artifact_dir
        finally:
            self.close()

    def prepare(self) -> ExportPipeline:
        """Lock the destination and create the staging folder beside it. Fails early when a backend's
        export would not fit this machine's memory (`export.memory`), on an unwritable output folder,
        and when another export to the same destination runs (DestinationBusy). Logs the leftovers of
        killed exports in the model folder, and the backends an existing artifact would lose."""
        config = self.config
        misfits = check_fits(config.spec, config.quantization, [b.value for b in config.backends])
        if misfits:
            raise MemoryError(
                describe_misfit(config.spec, config.quantization, misfits)
                + "; export the other backends here (--backends), or this one on a larger machine"
            )
        try:
            self.artifact_dir.parent.mkdir(parents=True, exist_ok=True)
            self._report_leftovers()  # before locking: the lock would hide this destination's own
            self._lock.acquire()
            self._staging = staging_path(self.artifact_dir)
            self._staging.mkdir()
        except DestinationBusy:
            raise
        except OSError as error:
            self.close()
            raise PermissionError(
                f"cannot write the artifact under {config.output_dir} ({error.strerror or error}); "
                "choose another folder with --output-dir"
            ) from None
        self._report_replacement()
        logger.info("exporting %s keep %d -> %s", config.model, config.keep_count, self.artifact_dir)
        return self

    def load(self, weights: bool = True) -> ExportPipeline:
        """Materialize the weights block by block (checkpoint or random), quantized; build the hollow
        twin. `weights=False`: the model stays on the meta device (`load_for_export`), enough for the
        manifest and the processor (an ExecuTorch-only export lowered in its own process, without
        the parity check: at LLaVA-Video-7B a 2-minute, 16 GiB load saved)."""
        self._require(self._staging is not None, "prepare")
        config = self.config
        with self._stage("load"):
            self.loaded = self._load_model(weights)
            with torch.device("meta"):
                hollow = config.spec.model_family.model_class(self.loaded.model.config).float()
            self.hollow = hollow.to_empty(device="cpu").eval().requires_grad_(False)
        return self

    def wrap(self) -> ExportPipeline:
        """The four graph modules of the hollow model with example inputs and dynamic dimensions."""
        self._require(self.hollow is not None, "load")
        with self._stage("wrap"):
            self.graphs = self._graphs(self.hollow)
        return self

    def trace(self) -> ExportPipeline:
        """torch.export (non-strict) of each hollow graph; checks that only the selection's graph holds scans."""
        self._require(self.graphs is not None, "wrap")
        self.programs = {}
        for graph in self.graphs:
            with self._stage(f"torch_export.{graph.name}"):
                self.programs[graph.name] = _export(graph)
            check_program(self.programs[graph.name], graph, loops=self.loops_in(graph.name))
        return self

    def to_onnx(self) -> ExportPipeline:
        """One .onnx per graph under the contract's names; the weights in one shared data file.

        A graph module's own tensors that the model does not hold (tables it computes from the
        config, e.g. rotary tables) hold their values already and stay in the .onnx file."""
        self._require(self.programs is not None, "trace")
        weights = _tensors(self.loaded.model)
        canonical = {id(tensor): name for name, tensor in _named_tensors(self.hollow)}
        with WeightFile(self._staging / ONNX_DIR) as store:
            for graph in self.graphs:
                names = {
                    name: canonical[id(tensor)]
                    for name, tensor in _named_tensors(graph.module)
                    if id(tensor) in canonical
                }
                with self._stage(f"onnx.{graph.name}"):
                    save_onnx(
                        self.programs[graph.name],
                        self._staging / onnx_file(graph.name),
                        weights=partial(
                            attach_weights, weights=weights, names=names, store=store, profile=self.config.onnx_profile
                        ),
                        input_names=graph.input_names,
                        output_names=graph.output_names,
                        dim_names=graph.dim_names(),
                        metadata=graph.metadata,
                    )
        self.programs = None
        self._written.add(Backend.ONNX)
        return self

    def to_executorch(self) -> ExportPipeline:
        """The .pte (in-place KV cache), lowered to XNNPACK one method at a time.

        A model whose lowering needs more than `OWN_PROCESS_BYTES` is lowered in a process of its
        own, which loads the model itself and exits when the file is written: what executorch's
        lowering leaves behind (measured at 7B: the model's size, after the weights themselves are
        freed) then goes with it, and this process never holds the model twice. `run` calls this
        stage first for that reason, before this process loads its own model.
        """
        self._require(self._staging is not None, "prepare")
        config = self.config
        if not self.lowers_in_own_process:
            self._require(self.loaded is not None, "load")
            self.pte_graphs = self._lower_pte(self.loaded.model, release=False)
        else:
            logger.info("lowering the .pte in a process of its own")
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                try:
                    self.pte_graphs, seconds, peaks = pool.submit(
                        _lower_pte_in_own_process, config, self._staging, is_verbose()
                    ).result()
                except BrokenProcessPool:
                    raise RuntimeError("the ExecuTorch lowering process died (killed for memory?)") from None
            self.export_seconds.update(seconds)
            self.peak_rss_mib.update(peaks)
        self._written.add(Backend.EXECUTORCH)
        return self

    def _lower_pte(self, model: PreTrainedModel, *, release: bool) -> tuple[GraphSpec, ...]:
        """Trace `model`'s .pte methods and lower them into the staging folder; with `release`, free
        the model's weights as they are lowered (`export.executorch.save_pte`: the model is unusable
        afterwards). Returns the methods' specs without their modules."""
        config = self.config
        graphs = build_pte_graphs(
            model,
            config.spec,
            keep=config.keep_count,
            max_seq_len=config.seq_len_limit,
            method=config.method,
            layers_per_method=config.layers_per_method or lowering_layers_per_method(config.spec, config.quantization),
        )
        programs = {}
        for graph in graphs:
            with self._stage(f"executorch.torch_export.{graph.name}"):
                programs[graph.name] = _export(graph)
            check_program(programs[graph.name], graph, loops=self.loops_in(graph.name))
        metadata = runner_metadata(model, config.seq_len_limit, config.spec.prune_layer)
        owners = {graph.name: graph.module for graph in graphs} if release else None
        with self._stage("executorch.lower"):
            save_pte(programs, self._staging / PTE_PATH, metadata, release=owners)
        return tuple(replace(graph, module=None, example_inputs=(), dynamic_shapes=None) for graph in graphs)

    def _load_model(self, weights: bool = True) -> LoadedModel:
        config = self.config
        return load_for_export(
            config.model,
            quantization=config.quantization,
            vision_quantization=config.vision_quantization,
            seed=config.seed if config.random_weights else None,
            model_path=config.model_path,
            image_size=config.image_size,
            frames=config.frames,
            weights=weights,
        )

    def check(self) -> ExportPipeline:
        """The written files against the contract (see `export.checks`)."""
        self._require(bool(self._written), "to_onnx or to_executorch")
        keep = self.config.keep_count
        with self._stage("check"):
            if Backend.ONNX in self._written:
                for graph in self.graphs:
                    check_onnx(self._staging / onnx_file(graph.name), graph, keep=keep, loops=self.loops_in(graph.name))
            if Backend.EXECUTORCH in self._written:
                check_pte(self._staging / PTE_PATH, self.pte_graphs, keep=keep)
        return self

    def save_processor(self) -> ExportPipeline:
        """Tokenizer, image processor and chat template, so that the runtime needs no checkpoint."""
        self._require(self.loaded is not None, "load")
        with self._stage("processor"):
            self.loaded.processor.save_pretrained(self._staging / PROCESSOR_DIR)
        return self

    def finalize(self, parity: ParityStatus = "skipped") -> Path:
        """Write manifest.json (every file's size and sha256) and move the artifact in place.

        Args:
            parity: the manifest's `parity.status`: "skipped", or "pending" when `check_parity` follows,
                so that an export killed before the check ends leaves "pending", never "skipped".
        """
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
            vision_quantization=self.config.vision_quantization,
            onnx_profile=self.config.onnx_profile,
            keep=self.config.keep_count,
            method=self.config.method,
            max_seq_len=self.config.seq_len_limit,
            files=files,
            export_seconds=self.export_seconds,
            peak_rss_mib=self.peak_rss_mib,
            parity=parity,
        )
        write_manifest(self._staging, manifest)
        replace_folder(self._staging, self.artifact_dir)
        self._staging = None
        logger.info("artifact written to %s", self.artifact_dir)
        return self.artifact_dir

    def check_parity(self, check: ParityCheck) -> ExportPipeline:
        """Run `check` on the artifact in place; store its report, status, seconds and memory in the manifest."""
        self._require((self.artifact_dir / MANIFEST).is_file(), "finalize")
        with self._stage("parity"):
            report = check(self)
        status = "passed" if report["passed"] else "failed"
        update_manifest(
            self.artifact_dir,
            parity={"status": status, "report": report},
            export_seconds=self.export_seconds,
            peak_rss_mib=self.peak_rss_mib,
        )
        logger.info("parity check %s", status)
        return self

    def close(self) -> None:
        """Remove the staging folder of an unfinished run and release the destination's lock."""
        try:
            if self._staging is not None and self._staging.exists():
                shutil.rmtree(self._staging)
            self._staging = None
        finally:
            self._lock.release()

    @cached_property
    def lowers_in_own_process(self) -> bool:
        """Whether `to_executorch` lowers in a process of its own (a large model); estimated once."""
        config = self.config
        return estimated_peak_bytes(config.spec, config.quantization, Backend.EXECUTORCH.value) > OWN_PROCESS_BYTES

    @property
    def pruned(self) -> bool:
        return self.config.keep_count < self.config.spec.num_image_tokens

    def loops_in(self, graph: str) -> bool:
        """Whether `graph` (an ONNX graph or a .pte method) holds the selection's loops
        (`SelectionMethod.loops`, `selection_graph`)."""
        method = self.config.method
        where = (method.selection_graph, PTE_SELECTION_METHODS[method.selection_graph])
        return self.pruned and method.loops and graph in where

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Log, time and measure one stage; raise KeyboardInterrupt at its ends when an interrupt came
        (`runtime.cli`), also one that library code swallowed or turned into another error."""
        raise_if_interrupted()
        logger.info("%s ...", name)
        start = time.perf_counter()
        try:
            with _heartbeat(name, start):
                yield
        except Exception:
            raise_if_interrupted()
            raise
        raise_if_interrupted()
        seconds = time.perf_counter() - start
        self.export_seconds[name] = round(seconds, 3)
        self.peak_rss_mib[name] = round(peak_rss_mib(), 1)
        logger.info("%s done in %.1f s (peak memory so far %.0f MiB)", name, seconds, self.peak_rss_mib[name])

    def _report_leftovers(self) -> None:
        leftovers = find_leftovers(self.artifact_dir.parent)
        for leftover in leftovers:
            logger.warning("leftover of a killed export: %s", leftover.describe())
        if leftovers:
            logger.warning("remove them with: %s", clean_command(self.config.output_dir))

    def _report_replacement(self) -> None:
        """One line when an artifact is in place already: it is replaced whole, whatever backends it holds."""
        if not self.artifact_dir.exists():
            return
        held = [backend for backend, folder in BACKEND_DIRS.items() if (self.artifact_dir / folder).is_dir()]
        lost = [backend.value for backend in held if not self.config.wants(backend)]
        if not lost:
            logger.info("the new artifact will replace %s", self.artifact_dir)
            return
        every = ",".join([*(backend.value for backend in self.config.backends), *lost])
        logger.warning(
            "the new artifact replaces %s and will no longer hold %s (to keep it, export with --backends %s)",
            self.artifact_dir, ", ".join(lost), every,
        )

    def _graphs(self, model: PreTrainedModel) -> tuple[GraphSpec, ...]:
        return build_graphs(
            model,
            self.config.spec,
            keep=self.config.keep_count,
            max_seq_len=self.config.seq_len_limit,
            method=self.config.method,
        )

    @staticmethod
    def _require(done: bool, stage: str) -> None:
        if not done:
            raise RuntimeError(f"run the {stage} stage first")


def _lower_pte_in_own_process(
    config: ExportConfig, staging: Path, verbose: bool
) -> tuple[tuple[GraphSpec, ...], dict[str, float], dict[str, float]]:
    """`ExportPipeline._lower_pte` of a freshly loaded model, in a spawned process, into `staging`:
    (the methods' specs, seconds per stage, peak memory per stage of this process)."""
    pipeline = ExportPipeline(config)
    pipeline._staging = staging
    with warnings.catch_warnings(), output_configured(verbose=verbose, stream=sys.stdout):
        with pipeline._stage("executorch.load"):
            model = pipeline._load_model().model
        graphs = pipeline._lower_pte(model, release=True)
    return graphs, pipeline.export_seconds, pipeline.peak_rss_mib


@contextmanager
def _heartbeat(stage: str, start: float, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Log "<stage> still running (N s)" every `every` seconds from a daemon thread until the block ends."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            logger.info("%s still running (%.0f s)", stage, time.perf_counter() - start)

    thread = threading.Thread(target=beat, name=f"heartbeat {stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _export(graph: GraphSpec) -> ExportedProgram:
    with torch.no_grad():
        return torch.export.export(graph.module, graph.example_inputs, dynamic_shapes=graph.dynamic_shapes, strict=False)


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every (name, parameter or buffer) of `module`, shared ones under each of their names."""
    return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(_named_tensors(model))
