"""Worker processes do not import from the directory a command runs in (issue 19.13).

A folder named ``pacscore`` (the folder holding a checkout, an archive called
``pacscore``) or a ``numpy.py`` in the working directory used to be imported by the
forkserver's workers (``python -c`` puts the current directory first on sys.path):
every import worker died.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRAP = "import pathlib; pathlib.Path({marker!r}).write_text('imported'); raise SystemExit(3)\n"


@pytest.mark.parametrize("command", ["import", "compress"])
def test_a_booby_trapped_working_directory_is_not_imported(tmp_path: Path, corpus: Path,
                                                          command: str) -> None:
    pacscore = Path(sys.executable).with_name("pacscore")
    if not pacscore.exists():
        pytest.skip("the pacscore console script is not installed next to this python")
    work = tmp_path / "work"
    (work / "pacscore").mkdir(parents=True)
    marker = tmp_path / "imported-from-cwd"
    for trap in ("pacscore/__init__.py", "numpy.py", "pydicom.py", "zarr.py"):
        (work / trap).write_text(TRAP.format(marker=str(marker)))
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())[:6]:
        shutil.copy(path, src / path.name)
    out = tmp_path / "out"
    args = (["import", str(src), "--archive", str(out)] if command == "import"
            else ["compress", str(src), "--out", str(out)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    run = subprocess.run([str(pacscore), *args, "--workers", "2", "--json"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert not marker.exists(), run.stderr[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["files"] == 6
    if command == "import":
        assert report["stored"] == 6 and report["failed"] == []
