"""What the command line and ``import pacscore`` load before any work (issue 14.2):
the archive engine (numba kernels, codecs, zarr, pydicom) and the doors (grpc,
starlette, uvicorn, pynetdicom) only when a command uses them.  Timings:
``benches/test_startup.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pacscore

HEAVY = ("numba", "zarr", "pydicom", "grpc", "starlette", "uvicorn", "imagecodecs", "dask",
         "pynetdicom", "lmdb", "numpy", "pacscore.kernels", "pacscore.codecs",
         "pacscore.archive")


def _loaded(code: str, cwd: Path) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after ``code``."""
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_and_import_pacscore_load_nothing_heavy(tmp_path: Path) -> None:
    assert _loaded("import pacscore, pacscore.errors, pacscore.kinds", tmp_path) == []
    help_ = ("import contextlib, io\nfrom pacscore.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out, "
             "contextlib.suppress(SystemExit):\n    main(['--help'])\n"
             "assert 'import' in out.getvalue()")
    assert _loaded(help_, tmp_path) == []
    bad = ("import contextlib, io\nfrom pacscore.cli import main\n"
           "with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
           "    main(['import', '--codec', 'nosuch', 'x'])")
    assert _loaded(bad, tmp_path) == []


def test_an_empty_import_loads_no_kernel_and_starts_no_worker(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code = ("import contextlib, io, multiprocessing\nfrom pacscore.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['import', {str(tmp_path / 'empty')!r}, '--archive', "
            f"{str(tmp_path / 'archive')!r}]) == 0\n"
            "assert not multiprocessing.active_children()\n"
            "from multiprocessing import forkserver\n"
            "assert forkserver._forkserver._forkserver_pid is None")
    loaded = _loaded(code, tmp_path)
    assert "pacscore.archive" in loaded  # it did open the archive
    assert not {"numba", "pacscore.kernels", "grpc", "starlette", "uvicorn", "dask"} & set(loaded)
    assert (tmp_path / "archive").is_dir()


def test_the_public_names_still_resolve() -> None:
    """Lazy names (PEP 562) are the same objects as their modules' and listed."""
    from pacscore import Archive, ArchiveConfig, StoreResult
    from pacscore.archive import Archive as FromModule
    from pacscore.jobs import plan
    from pacscore.jobs.plan import plan as plan_function

    assert Archive is FromModule and pacscore.Archive is Archive
    assert ArchiveConfig().codec == "htj2k" and StoreResult.__name__ == "StoreResult"
    assert plan is plan_function and callable(plan)
    assert {"Archive", "Limits", "VerifyReport"} <= set(dir(pacscore))
    assert set(pacscore.__all__) <= set(dir(pacscore))
    try:
        pacscore.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")
