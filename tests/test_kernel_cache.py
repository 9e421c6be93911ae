"""Compiled kernels are cached in the user's cache folder, never inside the package (14.1).

A cache written into ``site-packages/pacscore/kernels/__pycache__`` survives ``pip
uninstall`` and shadows a later editable install: ``pip install .`` then ``pip install
-e .`` left a CLI that could not import ``pacscore``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pacscore

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import numba.core.config as c; before = c.CACHE_DIR\n"
    "import pacscore.kernels as k, numpy as np\n"
    "from pacscore.kernels._cache import cache_folder\n"
    "assert k.bits_outside_stored(np.arange(8, dtype=np.uint16), 2, False)\n"
    "assert c.CACHE_DIR == before, (c.CACHE_DIR, before)\n"
    "print(cache_folder())\n"
)


def _compiled(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc"))


def _probe(env: dict[str, str], cwd: Path | None = None, **extra: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    full.update(env, **extra)
    run = subprocess.run([sys.executable, "-c", PROBE], env=full, cwd=cwd,
                         check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_kernels_cache_in_the_user_cache_folder(tmp_path: Path) -> None:
    package = Path(pacscore.__file__).parent / "kernels"
    before = set(_compiled(package))
    home = tmp_path / "cache"
    printed = _probe({"XDG_CACHE_HOME": str(home)})
    assert printed == str(home / "pacscore" / "numba")
    assert _compiled(home / "pacscore" / "numba"), "nothing cached in the user cache folder"
    assert set(_compiled(package)) == before, "the kernels wrote a cache into the package"
    assert (home / "pacscore" / "numba").stat().st_mode & 0o777 == 0o700


def test_numba_cache_dir_is_honoured(tmp_path: Path) -> None:
    own = tmp_path / "mine"
    assert _probe({"NUMBA_CACHE_DIR": str(own), "XDG_CACHE_HOME": str(tmp_path / "x")}) == str(own)
    assert _compiled(own) and not (tmp_path / "x").exists()


def test_a_folder_others_can_write_is_not_used(tmp_path: Path) -> None:
    """Cached kernels are loaded as code: a group/world-writable folder is passed over."""
    home = tmp_path / "cache"
    (home / "pacscore" / "numba").mkdir(parents=True)
    (home / "pacscore" / "numba").chmod(0o777)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    printed = _probe({"XDG_CACHE_HOME": str(home), "TMPDIR": str(tmp)})
    assert printed == str(tmp / f"pacscore-numba-{os.getuid()}")
    assert not _compiled(home) and _compiled(tmp)
    # and with no usable folder at all: compiled at each start, nothing written anywhere
    (tmp / f"pacscore-numba-{os.getuid()}").chmod(0o777)
    package = Path(pacscore.__file__).parent / "kernels"
    before = set(_compiled(package))
    assert _probe({"XDG_CACHE_HOME": str(home), "TMPDIR": str(tmp)}) == "None"
    assert set(_compiled(package)) == before


@pytest.mark.slow
def test_an_installed_package_stays_as_installed(tmp_path: Path) -> None:
    """``pip install .`` (not editable), then use the kernels: no file appears in the
    installed package, so an uninstall removes it all."""
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--target", str(target), str(REPO)],
                         check=False, capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    installed = {p for p in (target / "pacscore").rglob("*")}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    printed = _probe({"XDG_CACHE_HOME": str(tmp_path / "cache"),
                      "PYTHONPATH": str(target)}, cwd=outside)
    assert printed == str(tmp_path / "cache" / "pacscore" / "numba")
    new = {p for p in (target / "pacscore").rglob("*")} - installed
    assert not [p for p in new if p.suffix != ".pyc" and p.name != "__pycache__"], sorted(new)
    assert _compiled(tmp_path / "cache")
