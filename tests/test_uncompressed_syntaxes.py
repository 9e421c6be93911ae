"""Every object converts among the uncompressed transfer syntaxes (Implicit VR Little
Endian, Explicit VR Little and Big Endian, Deflated): objects without pixel data and
native ones as they are, compressed ones decoded.

Each output is read back by pydicom (every element value equal to the original's,
byte-swapped by its VR; pixels equal to an independent decode) and by DCMTK
(``dcmdump`` reads it without an error; ``dcmconv +te`` back to Explicit VR Little
Endian gives the original values again).
"""

from __future__ import annotations

import io
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from pacscore import Archive, ArchiveConfig, UnsupportedTransferSyntaxError
from pacscore.dicom.syntaxes import syntax

from .conftest import CorpusFile, corpus_files
from .helpers.values import element_values

IMPLICIT, EXPLICIT, BIG, DEFLATED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                     "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
UNCOMPRESSED = (IMPLICIT, EXPLICIT, BIG, DEFLATED)
DCMTK = Path("/usr/bin")
PIXEL, PLANAR, PHOTOMETRIC = 0x7FE00010, 0x00280006, 0x00280004

# A top-level item without its sequence (a Philips export): the archive keeps it, and
# refuses to write it again in another syntax rather than write invalid data.
CANNOT_CONVERT = {"odd/codec_quirks/US_jpegls_Philips.dcm": "item tag (FFFE,E000)"}

# Where DCMTK's own reading changes a value of a malformed original, by tag path: a
# private UN whose value is a lone sequence delimiter, read by DCMTK's Philips
# dictionary as an (empty) sequence.
DCMTK_READS_OTHERWISE = {"mr_series/single/Philips_MR_j2k.dcm": {(0x20051083,)}}

ELIGIBLE = [f for f in corpus_files()
            if not f.malformed and not syntax(f.transfer_syntax.split()[-1]).lossy]


# The fast run: one object of each kind that matters here; the slow run the others.
KINDS = ("other/rt/", "odd/big_endian/", "odd/rare_vrs/", "odd/private_tags/priv_SQ",
         "odd/private_tags/explicit_VR-UN", "odd/deflate/", "odd/palette/Philips",
         "odd/ybr/US_YBR_FULL_422_uncompressed", "odd/ybr/rle_planar_rgb",
         "odd/ybr/WG04_US1_J2KR", "odd/overlay_lut/MR-SIEMENS", "odd/charsets/chrSQEncoding.",
         "other/sr/test-SR_deep", "other/ecg/", "mammography/GE_MG_3062x2394_jpll",
         "odd/codec_quirks/US_jpegls_Philips", "odd/odd_dims/liver_nonbyte",
         "ct_series/dcmqi_ge_ct_3slice/01", "multiframe/us_cine/")
FAST = [f for f in ELIGIBLE if f.relative.startswith(KINDS)]
SLOW = [f for f in ELIGIBLE if f not in FAST]


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(DCMTK / tool), *args], capture_output=True, timeout=120,
                          check=False)
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode("utf-8", "replace"),
                                       done.stderr.decode("utf-8", "replace"))


def _reference_pixels(path: Path, uid: str, tmp_path: Path) -> list[np.ndarray]:
    """The original's frames decoded by something else than pacscore: DCMTK's
    dcmdjpeg for JPEG (no permissive JPEG decoder in pydicom's plugins), pydicom
    (OpenJPEG, CharLS, its RLE decoder) for the others; colour space as stored."""
    from pydicom.pixels import iter_pixels

    if uid.startswith("1.2.840.10008.1.2.4.5") or uid == "1.2.840.10008.1.2.4.70":
        out = tmp_path / "dcmdjpeg.dcm"
        done = _dcmtk("dcmdjpeg", "+cn", str(path), str(out))
        assert done.returncode == 0, done.stderr
        path = out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [np.asarray(f) for f in iter_pixels(pydicom.dcmread(path), raw=True)]


def _check(entry: CorpusFile, tmp_path: Path) -> None:
    data = entry.path.read_bytes()
    with Archive(tmp_path / "archive", ArchiveConfig(fsync=False)) as archive:
        result = archive.store(data)
        source = syntax(result.original_syntax)
        # compressed originals: the pixel data, and how it is described, change
        skip = frozenset({PIXEL, PLANAR, PHOTOMETRIC}) if source.encapsulated else frozenset()
        for target in UNCOMPRESSED:
            if entry.relative in CANNOT_CONVERT and target != result.original_syntax:
                with pytest.raises(UnsupportedTransferSyntaxError,
                                   match=CANNOT_CONVERT[entry.relative].replace("(", r"\(")
                                   .replace(")", r"\)")):
                    archive.get(result.sop_instance_uid, target)
                continue
            out = archive.get(result.sop_instance_uid, target)
            expected = _values(data, skip, result.original_syntax, source.encapsulated)
            got = _values(out, skip, target, source.encapsulated)
            assert got == expected, f"{target}: {_first_difference(expected, got)}"
            if source.encapsulated and archive.pixel_tag(result.sop_instance_uid):
                _same_pixels(entry, out, result.original_syntax, tmp_path)
            path = tmp_path / f"out-{target}.dcm"
            path.write_bytes(out)
            dump = _dcmtk("dcmdump", "-q", str(path))
            assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
            back = tmp_path / f"back-{target}.dcm"
            conv = _dcmtk("dcmconv", "+te", str(path), str(back))
            assert conv.returncode == 0, conv.stderr
            again = _values(back.read_bytes(), skip, EXPLICIT, source.encapsulated)
            ignored = DCMTK_READS_OTHERWISE.get(entry.relative, set())
            assert [v for v in again if v[0] not in ignored] == \
                [v for v in expected if v[0] not in ignored], \
                f"DCMTK back from {target}: {_first_difference(expected, again)}"


def _values(data: bytes, skip: frozenset[int], ts: str, nested_pixels_differ: bool
            ) -> list[tuple[tuple[int, ...], bytes]]:
    values = element_values(data, skip, ts)
    if nested_pixels_differ:  # icons of a compressed object are decoded too
        values = [(k, v) for k, v in values if len(k) == 1 or k[-1] not in (PIXEL, PLANAR,
                                                                              PHOTOMETRIC)]
    return values


def _first_difference(a: list[Any], b: list[Any]) -> str:
    da, db = dict(a), dict(b)
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            tags = "/".join(f"{k:08X}" for k in key)
            return f"{tags}: {da.get(key, 'missing')!r:.80} != {db.get(key, 'missing')!r:.80}"
    return "same values, other order"


def _same_pixels(entry: CorpusFile, out: bytes, uid: str, tmp_path: Path) -> None:
    from pydicom.pixels import iter_pixels

    reference = _reference_pixels(entry.path, uid, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(out))
        frames = [np.asarray(f) for f in iter_pixels(ds, raw=True)]
    assert ds.file_meta.TransferSyntaxUID in UNCOMPRESSED
    assert len(frames) == len(reference)
    for ours, theirs in zip(frames, reference, strict=True):
        assert np.array_equal(ours, theirs.reshape(ours.shape))


@pytest.mark.parametrize("entry", FAST, ids=[f.relative for f in FAST])
def test_object_converts_among_uncompressed_syntaxes(entry: CorpusFile,
                                                     tmp_path: Path) -> None:
    _check(entry, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("entry", SLOW, ids=[f.relative for f in SLOW])
def test_every_other_object_converts_among_uncompressed_syntaxes(entry: CorpusFile,
                                                                 tmp_path: Path) -> None:
    _check(entry, tmp_path)


@pytest.mark.skipif(not (DCMTK / "dcmconv").exists(), reason="DCMTK not installed")
@pytest.mark.parametrize("name", ["other/rt/rtdose_32bit_15fr.dcm", "odd/rare_vrs/OD-OF-OL.dcm",
                                  "odd/big_endian/US-RGB-8-epicard_big_endian.dcm"])
def test_big_endian_values_are_those_dcmtk_writes(corpus: Path, tmp_path: Path,
                                                  name: str) -> None:
    """32-bit RT Dose pixels, OD/OF/OL values, 8-bit OW: our Explicit VR Big Endian
    holds the bytes DCMTK's ``dcmconv +tb`` writes for every element (PS3.5 7.3; OW is
    a stream of 16-bit words, 8.1.1 - pydicom's ``pixel_array`` reads 32-bit big
    endian cells instead, so it is not the reference here)."""
    source = corpus / name
    with Archive(tmp_path / "archive", ArchiveConfig(fsync=False)) as archive:
        ours = archive.get(archive.store(source).sop_instance_uid, BIG)
    theirs = tmp_path / "dcmtk.dcm"
    done = _dcmtk("dcmconv", "+tb", str(source), str(theirs))
    assert done.returncode == 0, done.stderr
    assert element_values(ours) == element_values(theirs.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = pydicom.dcmread(io.BytesIO(ours)), pydicom.dcmread(theirs)
    for tag in (0x7FE00010, 0x00660016, 0x00660041, 0x0070150D):  # raw bytes, both BE
        if tag in b:
            assert a[tag].value == b[tag].value, f"{tag:08X}"
