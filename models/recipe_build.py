"""Checkpoints built offline from a recipe (the tiny test models): build once, reuse, never trust a
folder that does not hold a build of the current recipe.

A build writes the checkpoint into a staging folder beside the target, stamps it with the recipe's
hash (`<stamp_file>`: name, seed, recipe_sha256) and moves it in place, so that a half-written
build never passes for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    """How one tiny checkpoint is made.

    Attributes:
        name: the model's registry name.
        seed: the seed of its random weights.
        ingredients: everything the checkpoint depends on besides the seed (configs, corpus,
            templates); their repr is hashed into the stamp.
        write: writes the checkpoint (model and processor) into an empty folder.
        default_dir: the project's own cache folder of the build, built on demand.
    """

    name: str
    seed: int
    ingredients: object
    write: Callable[[Path], None]
    default_dir: Path

    @property
    def stamp_file(self) -> str:
        return f"{self.name.replace('-', '_')}_recipe.json"

    @property
    def stamp(self) -> dict[str, str | int]:
        digest = hashlib.sha256(repr((self.ingredients, self.seed)).encode()).hexdigest()
        return {"name": self.name, "seed": self.seed, "recipe_sha256": digest}

    def build(self, directory: str | os.PathLike | None = None) -> Path:
        """Build into `directory` (default `default_dir`) unless the current recipe is already there.

        Raises:
            FileExistsError: `directory` holds files that are not a build of this model.
        """
        target = Path(directory) if directory is not None else self.default_dir
        stamp = self.read_stamp(target)
        if stamp == self.stamp:
            return target
        if stamp is None and target.exists() and any(target.iterdir()):
            raise FileExistsError(f"{target} exists and is not a {self.name} build; choose an empty or new directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            self.write(staging)
            (staging / self.stamp_file).write_text(json.dumps(self.stamp, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return target

    def check(self, directory: str | os.PathLike) -> Path:
        """`directory` when it holds a build of the current recipe; nothing is built or deleted.

        Raises:
            FileNotFoundError: no build there.
            ValueError: a build of another recipe.
        """
        directory = Path(directory)
        stamp = self.read_stamp(directory)
        # `build` refuses a folder with files of something else.
        foreign = stamp is None and directory.is_dir() and any(directory.iterdir())
        target = "NEW_FOLDER" if foreign else directory
        how = (
            f"omit the model path to use {self.default_dir} (built on demand), or build one with "
            f"`python -c \"from {self.write.__module__} import RECIPE; RECIPE.build('{target}')\"`"
        )
        if stamp is None:
            raise FileNotFoundError(f"{directory} holds no {self.name} build (no valid {self.stamp_file}); {how}")
        if stamp != self.stamp:
            raise ValueError(f"{directory} holds a {self.name} build of another recipe; {how}")
        return directory

    def read_stamp(self, directory: Path) -> dict | None:
        """The recipe stamp of a build in `directory`; None when there is none, or it does not parse."""
        path = directory / self.stamp_file
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None
