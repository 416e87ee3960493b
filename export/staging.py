"""Destination locks and staging folders of exports; torch-free, so that the runtime can name leftovers.

An export of `<output_dir>/<model>/keep64` holds an flock on `<model>/.keep64.lock` for its whole
run, parity check included (`DestinationLock`): a second export of the same destination fails at
once, naming the process that holds it. Only while holding it does the export write: first into a
staging folder `<model>/.keep64-<8 hex digits>`, which is moved in place at the end
(`replace_folder`), the old artifact moved aside under a name of the same pattern and deleted.

The kernel releases the lock of a killed process. So a staging folder whose destination lock is free
belongs to no live export: it is the leftover of a killed one (SIGKILL, out-of-memory kill, power
loss), possibly gigabytes, which `find_leftovers` finds and `remove_leftovers` removes
(`python -m export --clean`). One lock per destination, rather than one per staging folder, is
enough: a staging folder exists only while its export holds the destination's lock, and no lock
file ends up inside an artifact.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from runtime.cli import INTERRUPT_SIGNALS

# `.<destination name>-<8 hex digits>`: a staging folder, or an old artifact being replaced.
_STAGING_NAME = re.compile(r"\.(?P<destination>.+)-[0-9a-f]{8}")


class DestinationBusy(OSError):
    """Another live process is exporting to the same destination."""


@dataclass(frozen=True)
class Leftover:
    """A staging folder that no live export holds.

    Attributes:
        path: the folder, `<model>/.keep<R>-<8 hex digits>`.
        destination: the artifact folder it was written for.
        bytes: the size of the files under it.
    """

    path: Path
    destination: Path
    bytes: int

    def describe(self) -> str:
        return f"{self.path} ({format_bytes(self.bytes)}), left by a killed export of {self.destination.name}"


class DestinationLock:
    """An exclusive flock on `<parent>/.<name>.lock` for the artifact folder `<parent>/<name>`.

    The file holds the owner's process id, and is removed by `release` (while still locked, and
    `acquire` checks that the file it locked is still the one at the path, so removing it is safe).
    Use as a context manager, or call `acquire` and `release`.
    """

    def __init__(self, destination: Path):
        self.destination = Path(destination)
        self.path = lock_path(self.destination)
        self._fd: int | None = None

    def acquire(self) -> DestinationLock:
        """Raises DestinationBusy when another process holds the lock (no waiting)."""
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DestinationBusy(
                    f"another export to {self.destination} is running (process {holder}); "
                    "wait for it to end, or stop it"
                ) from None
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # its owner released and removed it between our open and flock: lock the new one
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def release(self) -> None:
        if self._fd is not None:
            if _same_file(self._fd, self.path):  # not if someone removed it meanwhile
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DestinationLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_path(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.lock"


def is_locked(destination: Path) -> bool:
    """Whether a live process holds the lock of `destination` (read-only: creates nothing)."""
    try:
        fd = os.open(lock_path(destination), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock if it was taken


def staging_path(destination: Path) -> Path:
    """A fresh name beside `destination` that `find_leftovers` recognizes."""
    return destination.parent / f".{destination.name}-{uuid.uuid4().hex[:8]}"


def find_leftovers(folder: Path) -> list[Leftover]:
    """The staging folders directly in `folder` (a model folder, `<output_dir>/<model>`) whose
    destination no live export holds, sorted by path; [] when `folder` does not exist."""
    leftovers = []
    for path in sorted(Path(folder).glob(".*-*")):
        match = _STAGING_NAME.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink():
            destination = path.parent / match["destination"]
            if not is_locked(destination):
                leftovers.append(Leftover(path, destination, _tree_bytes(path)))
    return leftovers


def remove_leftovers(folder: Path) -> list[Leftover]:
    """Delete `find_leftovers(folder)` and return them; the lock files of killed exports go too.
    A leftover stays dead: exports only write into staging folders of fresh names, under their
    destination's lock."""
    leftovers = find_leftovers(folder)
    for leftover in leftovers:
        shutil.rmtree(leftover.path)
    for path in Path(folder).glob(".*.lock"):
        with suppress(DestinationBusy):  # a live export's
            DestinationLock(path.with_name(path.name[1 : -len(".lock")])).acquire().release()
    return leftovers


def clean_command(output_dir: Path) -> str:
    """The command that removes the leftovers under `output_dir`."""
    return f"python -m export --clean -o {output_dir}"


def replace_folder(source: Path, destination: Path) -> None:
    """Move the folder `source` to `destination`, replacing a folder there, as atomically as renames allow.

    The old folder is moved aside (a `staging_path` name), the new one moved in, the old one deleted,
    with interrupts held back until the end (`_interrupts_deferred`). A process killed between the two
    moves leaves no destination and the old folder as a leftover; otherwise the destination is the
    old folder or the new one, whole. Hold the destination's lock.
    """
    aside = staging_path(destination)
    with _interrupts_deferred():
        try:
            os.rename(destination, aside)
        except FileNotFoundError:
            aside = None
        try:
            os.rename(source, destination)
        except OSError:
            if aside is not None:
                os.rename(aside, destination)
            raise
        if aside is not None:
            shutil.rmtree(aside)


def format_bytes(size: int) -> str:
    """`size` bytes for a reader: "512 B", "3.4 MiB", "12.6 GiB"."""
    value, unit = float(size), "B"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP that arrive in the block are handled at its end, by the handlers of
    before (Python runs signal handlers in the main thread only: elsewhere, nothing is deferred)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with suppress(FileNotFoundError):  # removed meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total
