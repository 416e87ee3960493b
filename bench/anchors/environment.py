"""A virtual environment per anchor whose packages are not the toolchain's, made by the bench itself.

    anchor_python("llama_cpp", ["llama-cpp-python==0.3.36"])   -> .venv-anchors/llama_cpp/bin/python

The environment is layered on the toolchain's: a `.pth` file adds the toolchain's site-packages
after the environment's own, so that the anchor's pins win where they differ and torch,
transformers and numpy are not installed twice. None of the anchors is a dependency of the
toolchain; with no requirements, an anchor runs in the toolchain's own interpreter.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ROOT / ".venv-anchors"
LAYER_FILE = "toolchain.pth"
STAMP = ".installed"


def anchor_python(name: str, requirements: list[str]) -> Path:
    """The interpreter an anchor runs in: ours, or its environment's, made (once per requirements) if needed.

    Raises:
        RuntimeError: pip could not install the requirements (its output is in the message).
    """
    if not requirements:
        return Path(sys.executable)
    home = ENVIRONMENTS / name
    python = home / "bin" / "python"
    stamp = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    if (home / STAMP).exists() and (home / STAMP).read_text() == stamp:
        return python
    logger.info("making %s's environment in %s: %s (once)", name, home, " ".join(requirements))
    venv.EnvBuilder(clear=True, with_pip=True).create(home)
    site_packages = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    # `import` lines of a .pth run at start-up; addsitedir also reads our .pth files (the editable install).
    ours = sysconfig.get_paths()["purelib"]
    (site_packages / LAYER_FILE).write_text(f"import site; site.addsitedir({ours!r})\n")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {' '.join(requirements)} for {name}:\n{done.stdout}{done.stderr}")
    (home / STAMP).write_text(stamp)
    return python
