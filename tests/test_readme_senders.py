"""The README's DCMTK command lines, run exactly as printed (DCMTK's /usr/bin binaries,
not pynetdicom's console script of the same name in the venv) against `pacscore serve`:
`dcmsend` stores a folder of mixed compressed files (it proposes each file's own
syntax), `storescu -xs` a folder of uncompressed and JPEG Lossless files (issue 14.4:
the README's old line lacked +r and proposed uncompressed syntaxes only)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pacscore.testing import serving

README = Path(__file__).resolve().parent.parent / "README.md"

# Every syntax DCMTK 3.6.7 reads (not HTJ2K), one SOP Instance UID each, files it parses.
MIXED = [
    "ct_series/single",                                  # Explicit LE, J2K lossy, JPEG LL
    "ct_series/dcmqi_ge_ct_3slice",                      # Implicit LE
    "mr_series/single/Philips_MR_j2k.dcm",               # J2K lossless
    "mr_series/single/Siemens_MR_jpll.dcm",              # JPEG Lossless SV1
    "mammography",                                       # JPEG LL, J2K
    "multiframe/us_cine/GE_US_87fr_jpeg.dcm",            # JPEG Baseline
    "multiframe/us_cine/ClearCanvas_US_8fr_rgb_implicit.dcm",
    "odd/codec_quirks/CT0012_rle_bot.dcm",               # RLE
    "odd/codec_quirks/JLSL_16_15_signed.dcm",            # JPEG-LS lossless
    "odd/deflate/image_dfl.dcm",                         # Deflated
    "odd/ybr/Mindray_US_rle_YBR_FULL.dcm",               # RLE, YBR_FULL
]
SIMPLE = ["ct_series/dcmqi_ge_ct_3slice", "mr_series/single/Siemens_MR_jpll.dcm",
          "mammography/GE_MG_3062x2394_jpll.dcm"]


def readme_line(program: str) -> list[str]:
    """The README's command line running ``program``, split as a shell would."""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("TCP_NODELAY=1 ") and f"/usr/bin/{program} " in line:
            return shlex.split(line.split("#")[0])
    raise AssertionError(f"no {program} line in README.md")


def folder(corpus: Path, target: Path, entries: list[str]) -> int:
    """Copy ``entries`` (files or folders) into nested folders under ``target``."""
    for i, entry in enumerate(entries):
        src = corpus / entry
        dest = target / f"d{i % 3}" / f"e{i}"
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            dest.mkdir(parents=True)
            shutil.copy(src, dest / src.name)
    return sum(1 for p in target.rglob("*") if p.is_file())


@pytest.mark.parametrize(("program", "entries"), [("dcmsend", MIXED), ("storescu", SIMPLE)])
def test_readme_dcmtk_line_stores_the_whole_folder(tmp_path: Path, corpus: Path,
                                                   program: str, entries: list[str]) -> None:
    if not Path(f"/usr/bin/{program}").exists():
        pytest.skip(f"DCMTK's {program} is not installed")
    line = readme_line(program)
    env_part, argv = line[0], line[1:]
    assert env_part == "TCP_NODELAY=1" and argv[0] == f"/usr/bin/{program}"
    files = folder(corpus, tmp_path / "SOME_FOLDER", entries)
    archive = tmp_path / "archive"
    subprocess.run([sys.executable, "-m", "pacscore.cli", "ae", "add", "MODALITY", "--host",
                    "127.0.0.1", "--archive", str(archive)], check=True, capture_output=True)
    with serving(archive) as ports:
        argv = [str(ports["dimse"]) if a == "11112" else
                str(tmp_path / "SOME_FOLDER") if a == "SOME_FOLDER" else a for a in argv]
        sent = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                              env={**os.environ, "TCP_NODELAY": "1"})
        assert sent.returncode == 0, sent.stderr[-3000:]
    stats = json.loads(subprocess.run(
        [sys.executable, "-m", "pacscore.cli", "stats", "--archive", str(archive), "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert stats["instances"] == files, (stats, sent.stderr[-3000:])
    if program == "dcmsend":
        assert len(stats["transfer_syntaxes"]) >= 2  # compressed ones kept as received
