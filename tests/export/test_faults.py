"""Faults of `python -m export`: interrupts, kills, concurrent exports, leftovers; and their building blocks.

The real CLI runs in subprocesses on tiny-llava (ONNX only, no parity check, a checkpoint built once
per session; unpruned, keep 576, whose export takes a third of a pruned one's time) and is stopped
when its log says a stage started. Whatever happens, no folder may look like a complete artifact
(a manifest.json) unless its files verify. An interrupt during the parity check is covered in
test_pipeline.py (the status stays "pending").
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from export.manifest import read_manifest, verify_files, write_manifest
from export import staging
from export.staging import DestinationBusy, DestinationLock, find_leftovers, remove_leftovers, replace_folder
from tests.export.fixtures import REPO

PIPELINE_LOG = "[export.pipeline]"
KEEP = 576


class ExportProcess:
    """`python -m export` of tiny-llava keep 576 to ONNX, without parity, in a subprocess; its log read as it comes."""

    def __init__(self, model_path: Path, output_dir: Path, *, timeout: float = 240.0):
        self.stderr_path = output_dir.parent / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "export", "--keep", str(KEEP), "--backends", "onnx", "--skip-parity"]
                + ["--model-path", str(model_path), "-o", str(output_dir)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.timeout = timeout
        self.status: int | None = None
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def wait_for(self, stage: str) -> None:
        """Until the log says that `stage` started."""
        deadline = time.monotonic() + self.timeout
        while not self.lines or self.lines[-1] != f"{PIPELINE_LOG} {stage} ...":
            line = self._lines.get(timeout=deadline - time.monotonic())
            if line is None:
                pytest.fail(f"the export ended before {stage}:\n" + "\n".join(self.lines) + self.stderr())
            self.lines.append(line.rstrip("\n"))

    def finish(self) -> int:
        """The exit status, once the process ended and its whole log is read."""
        if self.status is None:
            while (line := self._lines.get(timeout=self.timeout)) is not None:
                self.lines.append(line.rstrip("\n"))
            self.status = self.process.wait(timeout=self.timeout)
        return self.status

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)


def assert_no_false_artifact(model_dir: Path) -> None:
    """Every folder under `model_dir` that holds a manifest.json (an artifact, a leftover) verifies."""
    for manifest in model_dir.glob("*/manifest.json"):
        assert verify_files(manifest.parent) == [], manifest.parent


@pytest.fixture(scope="module")
def raced(tiny_dir, tmp_path_factory) -> tuple[Path, ExportProcess, ExportProcess]:
    """Two exports of the same model and keep started at once: the output folder, the one that
    exited first (the loser, if all is well), the other."""
    output_dir = tmp_path_factory.mktemp("raced") / "artifacts"
    exports = [ExportProcess(tiny_dir, output_dir) for _ in range(2)]
    while all(export.process.poll() is None for export in exports):
        time.sleep(0.1)
    first = next(export for export in exports if export.process.poll() is not None)
    exports.remove(first)
    (second,) = exports
    first.finish()
    second.finish()
    return output_dir, second, first


def test_two_exports_at_once_end_with_one_valid_artifact(raced):
    output_dir, winner, loser = raced
    assert winner.finish() == 0, winner.stderr()
    folder = output_dir / "tiny-llava" / f"keep{KEEP}"
    assert verify_files(folder) == [] and read_manifest(folder)["parity"] == {"status": "skipped"}
    assert loser.finish() == 2
    assert loser.stderr() == (
        f"error: another export to {folder} is running (process {winner.process.pid}); wait for it to end, or stop it\n"
    )
    assert sorted(path.name for path in folder.parent.iterdir()) == [folder.name]


@pytest.mark.parametrize("stage", ["torch_export.prefill", "onnx.prefill"])
def test_interrupt_cleans_up_and_keeps_the_old_artifact(raced, tiny_dir, stage):
    output_dir, _, _ = raced
    folder = output_dir / "tiny-llava" / f"keep{KEEP}"
    before = read_manifest(folder)
    export = ExportProcess(tiny_dir, output_dir)
    export.wait_for(stage)
    export.process.send_signal(signal.SIGINT)
    assert export.finish() == 130
    assert export.stderr() == "interrupted\n"
    assert sorted(path.name for path in folder.parent.iterdir()) == [folder.name]  # no staging folder, no lock
    assert read_manifest(folder) == before
    assert_no_false_artifact(folder.parent)


def test_kills_leave_leftovers_that_the_next_export_names_and_clean_removes(raced, tiny_dir):
    output_dir, _, _ = raced
    model_dir = output_dir / "tiny-llava"
    folder = model_dir / f"keep{KEEP}"
    before = read_manifest(folder)
    killed = ExportProcess(tiny_dir, output_dir)
    killed.wait_for("onnx.prefill")
    killed.process.send_signal(signal.SIGKILL)
    assert killed.finish() == -signal.SIGKILL
    (leftover,) = find_leftovers(model_dir)
    assert leftover.path.name.startswith(f".{folder.name}-") and leftover.destination == folder
    assert leftover.bytes > 0  # the graphs written so far
    assert_no_false_artifact(model_dir)
    assert read_manifest(folder) == before

    following = ExportProcess(tiny_dir, output_dir)
    following.wait_for("load")
    following.process.send_signal(signal.SIGKILL)
    assert following.finish() == -signal.SIGKILL
    assert f"{PIPELINE_LOG} leftover of a killed export: {leftover.describe()}" in following.lines
    assert f"{PIPELINE_LOG} remove them with: python -m export --clean -o {output_dir}" in following.lines
    leftovers = find_leftovers(model_dir)
    assert len(leftovers) == 2 and leftover in leftovers
    assert read_manifest(folder) == before

    clean = subprocess.run(
        [sys.executable, "-m", "export", "--clean", "-o", str(output_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert clean.returncode == 0
    assert all(f"removed {leftover.describe()}" in clean.stdout for leftover in leftovers)
    assert sorted(path.name for path in model_dir.iterdir()) == [folder.name]


def test_live_staging_folder_is_no_leftover(tmp_path):
    destination = tmp_path / "tiny-llava" / "keep64"
    staging = destination.parent / ".keep64-0123abcd"
    (staging / "onnx").mkdir(parents=True)
    (staging / "onnx" / "weights.data").write_bytes(bytes(3000))
    other = destination.parent / ".keep192-int4-89abcdef"
    other.mkdir()
    (destination.parent / ".keep192-int4.lock").write_text("4242\n")  # of a killed export
    with DestinationLock(destination):
        assert [leftover.path for leftover in find_leftovers(destination.parent)] == [other]
        assert remove_leftovers(destination.parent)[0].path == other
        assert sorted(path.name for path in destination.parent.iterdir()) == [".keep64-0123abcd", ".keep64.lock"]
    (leftover,) = find_leftovers(destination.parent)
    assert leftover.path == staging and leftover.bytes == 3000
    assert leftover.describe() == f"{staging} (2.9 KiB), left by a killed export of keep64"
    assert find_leftovers(tmp_path / "missing") == []


def test_lock_is_exclusive_and_removed_on_release(tmp_path):
    destination = tmp_path / "keep64"
    with DestinationLock(destination) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(DestinationBusy, match=rf"\(process {os.getpid()}\)"):
            DestinationLock(destination).acquire()
    assert list(tmp_path.iterdir()) == []


def test_replace_folder_keeps_the_old_one_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    old, new = tmp_path / "keep64", tmp_path / ".keep64-0123abcd"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        write_manifest(folder, {"files": {}, "which": text})
    rename = os.rename

    def fail_moving_in(source, destination):
        if Path(source) == new:
            raise OSError(errno.ENOSPC, "No space left on device")
        rename(source, destination)

    monkeypatch.setattr(os, "rename", fail_moving_in)
    with pytest.raises(OSError):
        replace_folder(new, old)
    assert read_manifest(old)["which"] == "old" and new.is_dir()
    monkeypatch.setattr(os, "rename", rename)
    replace_folder(new, old)
    assert read_manifest(old)["which"] == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["keep64"]


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    write_manifest(tmp_path, {"parity": {"status": "pending"}})

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        write_manifest(tmp_path, {"parity": {"status": "passed"}})
    assert read_manifest(tmp_path) == {"parity": {"status": "pending"}}
    assert [path.name for path in tmp_path.iterdir()] == ["manifest.json"]


def test_interrupt_during_the_swap_is_handled_after_it():
    swapped = []
    # Python's own Ctrl-C handler, whatever an earlier test or library installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with staging._interrupts_deferred():
                signal.raise_signal(signal.SIGINT)
                swapped.append(True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert swapped == [True]
