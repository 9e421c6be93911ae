"""JPEG input (Baseline .50, Extended .51, Lossless .57 and .70) decodes without the
GPL-3.0 pylibjpeg-libjpeg: through libjpeg-turbo (imagecodecs), sample for sample as
DCMTK's dcmdjpeg decodes it, for every JPEG object of the corpus."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array

from pacscore import Archive, ArchiveConfig

from .conftest import CorpusFile, corpus_files

JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70")
FILES = [f for f in corpus_files() if f.transfer_syntax in JPEG and not f.malformed
         and f.relative not in ("odd/rare_vrs/OD-OF-OL.dcm",  # no pixel data
                                "odd/web_security/XSSInjection.dcm")]
DCMDJPEG = Path("/usr/bin/dcmdjpeg")


def test_jpeg_is_decoded_by_the_imagecodecs_plugin_whatever_else_is_installed() -> None:
    """pydicom would pick pylibjpeg-libjpeg first where it is still installed (an
    environment from before it was dropped): the plugin is pinned per syntax."""
    from pacscore.codecs import jpeg_plugin
    from pacscore.codecs.decoding import DECODERS

    assert {DECODERS[uid] for uid in JPEG} == {jpeg_plugin.LABEL}
    assert set(jpeg_plugin.DECODER_DEPENDENCIES) == set(JPEG)


@pytest.mark.skipif(not DCMDJPEG.exists(), reason="DCMTK not installed")
@pytest.mark.parametrize("entry", FILES, ids=[f.relative for f in FILES])
def test_jpeg_frames_decode_as_dcmtk_decodes_them(entry: CorpusFile, tmp_path: Path) -> None:
    reference = tmp_path / "dcmdjpeg.dcm"
    done = subprocess.run([str(DCMDJPEG), "+cn", str(entry.path), str(reference)],
                          capture_output=True, check=False)  # +cn: colour space as stored
    if done.returncode != 0:  # (Acuson's cine: DCMTK cannot parse its sequence items)
        pytest.skip(f"dcmdjpeg cannot read it: {done.stderr[-200:]!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.dcmread(reference)
        frames = int(getattr(ref, "NumberOfFrames", 1) or 1)
        expected = pixel_array(ref, raw=True).reshape(frames, -1)  # no colour conversion
    with Archive(tmp_path / "archive", ArchiveConfig(fsync=False)) as archive:
        sop = archive.store(entry.path).sop_instance_uid
        assert archive.record(sop).frame_crc32  # decoded at ingest too
        ours = archive.frames(sop, None, "native")
    assert len(ours) == frames
    for i, frame in enumerate(ours):
        got = np.frombuffer(frame, expected.dtype.newbyteorder("<"))
        assert np.array_equal(got, expected[i]), f"frame {i}"
