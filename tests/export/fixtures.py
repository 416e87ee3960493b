"""Session fixtures of exported tiny-llava artifacts, shared by every test package.

Registered for all of tests/ by `tests/conftest.py` (`pytest_plugins`). Each keep count is
exported at most once per session, to both backends, into a temporary folder, and only when a
test asks for it:

    def test_something(exported_artifact):
        folder = exported_artifact(64)          # artifacts/<tmp>/tiny-llava/keep64/

    def test_other(artifact_dirs):
        folder = artifact_dirs[576]             # the same, as a lazy {keep: folder} mapping

The artifacts are exported without the parity check (their manifest's `parity` is
`{"status": "skipped"}`). Under pytest-xdist (`make test`) the workers share them and the
checkpoint they come from: the first that asks builds or exports it, under a file lock, into the
run's common temporary folder (so every manifest names the checkpoint every worker sees).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from export.__main__ import take_reference
from export.config import ExportConfig
from export.pipeline import ExportPipeline
from models import LoadedModel, load_model
from models.recipe_build import Recipe
from models.tiny_llava import RECIPE, VIDEO_RECIPE
from runtime.backends.onnx_prepacked import CACHE_ENV
from runtime.contract import MANIFEST
from runtime.parity import ParityReport, check_parity

# The keep counts the tests cover: 88.9 % and 66.7 % pruning, and the unpruned baseline.
TEST_KEEPS = (64, 192, 576)
# The keeps whose .pte lowers one decoder layer per method (see `exported_artifact`).
GROUPED_KEEPS = (64, 576)
GROUPED_LAYERS_PER_METHOD = 1
REPO = Path(__file__).resolve().parents[2]


class LazyArtifacts(Mapping[int, Path]):
    """{keep: artifact folder} for `TEST_KEEPS`; a folder is exported on first access."""

    def __init__(self, export: Callable[[int], Path]):
        self._export = export

    def __getitem__(self, keep: int) -> Path:
        if keep not in TEST_KEEPS:
            raise KeyError(keep)
        return self._export(keep)

    def __iter__(self) -> Iterator[int]:
        return iter(TEST_KEEPS)

    def __len__(self) -> int:
        return len(TEST_KEEPS)


def run_folder(tmp_path_factory) -> Path:
    """The temporary folder common to every worker of this run."""
    # An xdist worker's base folder is <run>/popen-gwN: <run> is common to the run's workers.
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def prepacked_cache(tmp_path_factory) -> Iterator[Path]:
    """The run's cache of prepacked ONNX graphs (runtime/backends/onnx_prepacked.py), in its
    temporary folder instead of the user's: every session of the run, and the exports it starts
    as child processes, share it."""
    folder = run_folder(tmp_path_factory) / "prepacked-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


def shared_build(tmp_path_factory, recipe: Recipe) -> Path:
    """`recipe`'s tiny checkpoint, built offline once per run, whichever worker asks first."""
    target = run_folder(tmp_path_factory) / "checkpoints" / recipe.name
    target.parent.mkdir(exist_ok=True)
    with FileLock(target.parent / f"{recipe.name}.lock"):
        return recipe.build(target)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny-llava checkpoint, shared by the run's workers."""
    return shared_build(tmp_path_factory, RECIPE)


@pytest.fixture(scope="session")
def tiny_video_dir(tmp_path_factory) -> Path:
    """The tiny-llava-video checkpoint, shared by the run's workers."""
    return shared_build(tmp_path_factory, VIDEO_RECIPE)


@pytest.fixture(scope="session")
def tiny(tiny_dir) -> LoadedModel:
    return load_model("tiny-llava", tiny_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def exported_artifact(tiny_dir, tmp_path_factory) -> Callable[[int], Path]:
    """keep -> the artifact folder of tiny-llava at that keep (ONNX and ExecuTorch), exported once
    per run, whichever worker asks first.

    The .pte's three layouts among them (tiny-llava: 4 layers, K = 2): keep 64 and N (576) lower
    one layer per method (`layers_per_method=1`: head, selection when pruned, one layer group,
    tail), other keeps one text method each side of K. The one unpruned `text_decoder` of
    ExecuTorch's runners: tests/export/test_executorch_runner.py."""
    root = run_folder(tmp_path_factory) / "tiny-llava-artifacts"
    root.mkdir(exist_ok=True)
    folders: dict[int, Path] = {}

    def export(keep: int) -> Path:
        if keep not in folders:
            layers = GROUPED_LAYERS_PER_METHOD if keep in GROUPED_KEEPS else None
            config = ExportConfig(model="tiny-llava", keep=keep, model_path=tiny_dir, output_dir=root, layers_per_method=layers)
            with FileLock(root / f"keep{keep}.lock"):
                done = (config.artifact_dir / MANIFEST).is_file()
                folders[keep] = config.artifact_dir if done else ExportPipeline(config).run()
        return folders[keep]

    return export


@pytest.fixture(scope="session")
def artifact_dirs(exported_artifact) -> Mapping[int, Path]:
    """{64, 192, 576: artifact folder}, each exported when first looked up."""
    return LazyArtifacts(exported_artifact)


def export_and_check(config: ExportConfig, steps: int) -> tuple[Path, ParityReport]:
    """Export `config` without the pipeline's own check, then check parity over `steps` tokens
    against the eager model the export loaded: (artifact folder, parity report)."""
    pipeline = ExportPipeline(config)
    folder = pipeline.run()
    return folder, check_parity(folder, reference=take_reference(pipeline), steps=steps)


@contextmanager
def export_in_child(tmp_path_factory, model: str, steps: int, *options: str) -> Iterator[Path]:
    """`python -m export --model MODEL --random-weights --keep 64 --parity-steps STEPS OPTIONS` in a
    child process (its memory given back when it ends), into a folder of its own that is removed on
    exit with the prepacked graphs its parity check made: a real-width artifact takes 1-7 GB of
    disk, and CI's is not unbounded. Gives the export's output folder."""
    output = tmp_path_factory.mktemp(model)
    command = [sys.executable, "-m", "export", "--model", model, "--random-weights", "--keep", "64"]
    command += [*options, "--parity-steps", str(steps), "-o", str(output)]
    try:
        env = {**os.environ, CACHE_ENV: str(output / "prepacked-cache")}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield output
    finally:
        shutil.rmtree(output)


def exporter(model: str, checkpoint: Path, root: Path, steps: int) -> Callable[..., tuple[Path, ParityReport]]:
    """(keep, quantization="none") -> (artifact folder, parity report over `steps` tokens) of `model`
    from `checkpoint`, exported into `root` on first use: float32 to both backends, quantized to
    ONNX Runtime only (ExecuTorch's 8da4w: tests/export/test_memory_saving_export.py)."""
    done: dict[tuple[int, str], tuple[Path, ParityReport]] = {}

    def export(keep: int, quantization: str = "none") -> tuple[Path, ParityReport]:
        if (keep, quantization) not in done:
            backends = ("onnx", "executorch") if quantization == "none" else ("onnx",)
            config = ExportConfig(
                model=model, keep=keep, quantization=quantization, model_path=checkpoint, output_dir=root, backends=backends
            )
            done[keep, quantization] = export_and_check(config, steps)
        return done[keep, quantization]

    return export
