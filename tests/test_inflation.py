"""Deflated data sets (PS3.5 A.5) inflate within absolute bounds (audit 19.9).

A 987 KB deflated object just under the 1000:1 ratio guard inflated to 973 MB and was
stored; one import peaked at 1.9 GB (the inflated data was held twice), three
concurrent uploads took 6.7 GB.  The bombs are built here: a data set with a huge OB
element of zeros, deflated, with enough random bytes that the ratio stays just under
the guard.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid

from pacscore import Archive, ArchiveConfig
from pacscore.config import Limits
from pacscore.dicom.scan import scan
from pacscore.errors import LimitExceededError

DEFLATED = "1.2.840.10008.1.2.1.99"
MiB = 1024**2


def deflate_bomb(path: Path, zeros: int, ratio: float = 990.0) -> Path:
    """A Deflated Explicit VR Little Endian object whose data set holds ``zeros`` zero
    bytes in a private OB element; its inflated/deflated ratio is about ``ratio``."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BOMB", "Bomb^Deflate", "OT"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    head = fp.getvalue() + struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"BOMB"
    pad = os.urandom(max(0, int(zeros / ratio - zeros / 1030)) & ~1)  # zeros reach ~1030
    head += struct.pack("<HH2sHI", 0x0009, 0x1008, b"OB", 0, len(pad)) + pad
    head += struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, zeros)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (ds.SOPClassUID,
                                                                      ds.SOPInstanceUID)
    meta.TransferSyntaxUID, meta.ImplementationClassUID = DEFLATED, generate_uid()
    mfp = DicomBytesIO()
    mfp.is_little_endian, mfp.is_implicit_VR = True, False
    write_file_meta_info(mfp, meta)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(MiB)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + mfp.getvalue() + deflater.compress(head))
        for left in range(zeros, 0, -MiB):
            f.write(deflater.compress(block[:min(left, MiB)]))
        f.write(deflater.flush())
    return path


def test_the_cap_refuses_a_bomb_under_the_ratio_guard(tmp_path: Path) -> None:
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 24 * MiB)
    assert 900 < 24 * MiB / bomb.stat().st_size < 1000  # the ratio guard lets it pass
    limits = Limits(max_inflated_bytes=16 * MiB)
    with Archive(tmp_path / "a", ArchiveConfig(limits=limits)) as archive:
        with pytest.raises(LimitExceededError, match=rf"deflated data set of \d+ bytes "
                           rf"inflates beyond {16 * MiB} bytes \(the max_inflated_bytes"):
            archive.store(bomb)
        assert archive.stats()["instances"] == 0
        assert list(archive.store_.staging.iterdir()) == []
        small = deflate_bomb(tmp_path / "small.dcm", 8 * MiB)
        result = archive.store(small)  # under the cap: stored, kept as received
        assert archive.get(result.sop_instance_uid) == small.read_bytes()


def test_concurrent_inflations_wait_for_the_budget(tmp_path: Path) -> None:
    """Inflated data sets alive at once in a process never exceed the budget: a second
    one waits until the first is freed."""
    limits = Limits(max_inflated_bytes=40 * MiB, inflate_budget_bytes=48 * MiB)
    first = deflate_bomb(tmp_path / "a.dcm", 32 * MiB).read_bytes()
    second = deflate_bomb(tmp_path / "b.dcm", 32 * MiB).read_bytes()
    held = scan(first, limits, "first")
    assert len(held.body) > 32 * MiB
    done = threading.Event()
    worker = threading.Thread(target=lambda: (scan(second, limits, "second"), done.set()))
    worker.start()
    try:
        assert not done.wait(2.0)  # 32 MiB held + a 33 MB cap > 48 MiB: it waits
        del held
        gc.collect()
        assert done.wait(60.0)  # freed: the second one inflates
    finally:
        worker.join(120)


def test_deflated_corpus_files_store_and_rebuild_byte_identically(tmp_path: Path,
                                                                   corpus: Path) -> None:
    files = sorted((corpus / "odd" / "deflate").glob("*.dcm"))
    assert files
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        for path in files:
            result = archive.store(path)
            assert result.status == "stored" and result.original_syntax == DEFLATED
            assert archive.get(result.sop_instance_uid) == path.read_bytes()
        image = archive.store(corpus / "odd/deflate/image_dfl.dcm")
        assert archive.get(image.sop_instance_uid, "1.2.840.10008.1.2.1")[128:132] == b"DICM"


def _import_peak(archive: Path, folder: Path) -> tuple[int, dict[str, object], int]:
    """``pacscore import`` of ``folder`` with one worker: exit code, JSON summary and
    the highest peak RSS (VmHWM) of any of its processes."""
    proc = subprocess.Popen([sys.executable, "-m", "pacscore.cli", "import", str(folder),
                             "--archive", str(archive), "--workers", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
                peak = max(peak, hwm * 1024)
            except (OSError, StopIteration):
                pass
        time.sleep(0.02)
    out, _ = proc.communicate()
    return proc.returncode, json.loads(out), peak


@pytest.mark.slow
def test_peak_memory_of_an_import_is_bounded(tmp_path: Path, corpus: Path) -> None:
    """The audit's bomb (973 MB in ~985 KB) is refused at the 512 MiB cap; a 300 MB
    one is stored; neither takes more than its size once (plus 30% slack) over what
    an import of an ordinary file takes."""
    small = tmp_path / "small"
    small.mkdir()
    (small / "ct.dcm").write_bytes((corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm")
                                   .read_bytes())
    code, _, baseline = _import_peak(tmp_path / "base", small)
    assert code == 0
    audit = tmp_path / "audit"
    audit.mkdir()
    bomb = deflate_bomb(audit / "bomb.dcm", 973_000_000)
    assert 950 < 973_000_000 / bomb.stat().st_size < 1000
    code, out, peak = _import_peak(tmp_path / "a", audit)
    cap = Limits().max_inflated_bytes
    assert code == 1 and out["stored"] == 0
    [rejected] = out["rejected"]  # type: ignore[misc]
    assert f"inflates beyond {cap} bytes (the max_inflated_bytes" in rejected["reason"]
    assert peak - baseline < 1.3 * cap, (peak, baseline)
    bomb.unlink()
    deflate_bomb(audit / "stored.dcm", 300_000_000)
    code, out, peak = _import_peak(tmp_path / "b", audit)
    assert code == 0 and out["stored"] == 1
    assert peak - baseline < 1.3 * 300_000_000, (peak, baseline)  # was twice its size

