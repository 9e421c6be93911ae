"""The DIMSE spool against another local user (audit of 2026-12-03, finding 19.1):
a folder name nobody can predict or take over, files nobody else can swap, folders
others control refused, and nothing left by a start that failed.  The other user is
``nobody`` through ``runuser`` (skipped where that is not possible)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacscore.testing import free_port, serving

from .test_dimse_security import _sop, archive, dcmtk, files, needs_dcmtk

__all__ = ["archive", "files"]  # fixtures shared with test_dimse_security


_SWAPPER = r"""
import glob, os, sys, time
data = sys.stdin.buffer.read()
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for folder in glob.glob("/dev/shm/pacscore-spool-*"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith("pacscore-dimse-"):
                tmp = os.path.join(folder, ".swap%d" % os.getpid())
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, os.path.join(folder, name))
                except OSError:
                    pass
    time.sleep(0.001)
"""


def _as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another local user")
    try:
        subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", "0"],
                       check=True, capture_output=True, timeout=30)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("user nobody or /usr/bin/python3 unavailable")
    return ["runuser", "-u", "nobody", "--", "/usr/bin/python3"]


@needs_dcmtk
def test_another_local_user_cannot_take_over_the_spool(archive: Path, files: list[Path],
                                                       tmp_path: Path) -> None:
    """As the audit did: user nobody creates the folder name the spool used to have
    (/dev/shm/pacscore-spool-<hash of the archive>, mode 0777) before the server
    starts, and swaps every spool file it can reach for an instance of its own while
    storescu sends 10 instances.  Every acknowledged instance is stored byte for byte,
    nothing of nobody's is, and the spool is a folder only the server's user can
    enter."""
    nobody = _as_nobody()
    from pacscore.services.serve import _is_tmpfs, spool_folders

    if not _is_tmpfs(Path("/dev/shm")) or shutil.disk_usage("/dev/shm").free < 8 * 1024**3:
        pytest.skip("the default spool is not in /dev/shm here")
    import hashlib

    old = Path("/dev/shm") / ("pacscore-spool-" + hashlib.sha256(
        str(archive.resolve()).encode()).hexdigest()[:16])
    subprocess.run([*nobody, "-c", f"import os; os.mkdir({str(old)!r}); "
                    f"os.chmod({str(old)!r}, 0o777)"], check=True, timeout=30)
    injected = pydicom.dcmread(files[0])
    injected.PatientName = "INJECTED^BY^NOBODY"
    injected.SOPInstanceUID = injected.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    data = tmp_path / "injected.dcm"
    injected.save_as(data, enforce_file_format=True)
    try:
        with serving(archive) as ports:
            spools = spool_folders(archive)
            assert len(spools) == 1 and spools[0] != old
            mode = spools[0].stat().st_mode & 0o777
            assert mode == 0o700 and spools[0].stat().st_uid == os.geteuid()
            swapper = subprocess.Popen([*nobody, "-c", _SWAPPER, "20"], stdin=subprocess.PIPE)
            assert swapper.stdin is not None
            swapper.stdin.write(data.read_bytes())
            swapper.stdin.close()
            try:
                time.sleep(0.5)
                stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE",
                               "127.0.0.1", str(ports["dimse"]), *map(str, files[:10]))
                assert stored.returncode == 0, stored.stderr
            finally:
                swapper.kill()
                swapper.wait()
        assert spool_folders(archive) == []  # removed at stop
    finally:
        shutil.rmtree(old, ignore_errors=True)
    from pacscore import Archive

    with Archive(archive, readonly=True) as arch:
        assert arch.stats()["instances"] == 10
        for path in files[:10]:
            got = pydicom.dcmread(io.BytesIO(arch.get(_sop(path), "original")))
            sent = pydicom.dcmread(path)
            assert got.PatientName == sent.PatientName
            assert np.array_equal(got.pixel_array, sent.pixel_array)
        assert not arch.query("patient", {"PatientName": "INJECTED*"})


@pytest.mark.parametrize("case", ["owned_by_nobody", "writable_by_others", "symlink"])
def test_a_spool_folder_others_control_is_refused(archive: Path, tmp_path: Path,
                                                  case: str) -> None:
    """`--spool DIR` that belongs to another user, that others may write to, or that is
    a symbolic link: `serve` exits with 2 and says why, before listening."""
    spool = tmp_path / "spool"
    if case == "owned_by_nobody":
        _as_nobody()
        spool.mkdir(mode=0o700)
        os.chown(spool, 65534, 65534)
    elif case == "writable_by_others":
        spool.mkdir()
        spool.chmod(0o777)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        spool.symlink_to(tmp_path / "elsewhere")
    ports = [str(free_port()) for _ in range(3)]
    run = subprocess.run(
        [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(archive),
         "--spool", str(spool), "--dimse-port", ports[0], "--http-port", ports[1],
         "--grpc-port", ports[2]], check=False, capture_output=True, text=True,
        timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "spool folder" in run.stderr and "refused" in run.stderr
    assert "listening" not in run.stdout


def test_a_failed_start_leaves_no_spool(archive: Path) -> None:
    """The DIMSE port is taken: `serve` fails, and its /dev/shm spool is gone."""
    from pacscore.services.serve import spool_folders

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        ports = [str(taken.getsockname()[1]), str(free_port()), str(free_port())]
        run = subprocess.run(
            [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(archive),
             "--dimse-port", ports[0], "--http-port", ports[1], "--grpc-port", ports[2]],
            check=False, capture_output=True, text=True, timeout=120)
    finally:
        taken.close()
    assert run.returncode != 0
    assert spool_folders(archive) == []

