"""Rendered images (pacscore.render, and the DICOMweb rendered, thumbnail and WADO-URI
image routes of a real `pacscore serve`) against a reference made with pydicom's own
pixel processing on pydicom's decoding of the original file
(tests/helpers/render_reference.py).

Tolerance: greyscale may differ by 1 where the exact value lies halfway between two
outputs (e.g. 212.5): pacscore computes it with one rounding and rounds it up; pydicom
windows into its own output range, which the reference then maps to 0..255, and its
several roundings can land just below.  At most 1% of the pixels may differ (the
corpus: up to 36 of a 1024 x 1024 frame), so a mapping off by one everywhere fails.
Palette and YBR colour, which both take from pydicom's ``apply_color_lut`` and
``convert_color_space``, must be equal.
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import encapsulate, generate_frames

from pacscore import Archive, ArchiveConfig, ConflictError
from pacscore.render import Rendering, RenderOptions, Window, render_frame
from pacscore.services.dicomweb.multipart import parse_related
from pacscore.testing import serving

from .conftest import corpus_root
from .helpers.render_reference import read, reference

# Corpus images that exercise one rule each, with the frame rendered (0-based).
CASES: list[tuple[str, int]] = [
    ("ct_series/single/GE_lung_signed.dcm", 0),            # rescale, LINEAR window
    ("other/pet/ACRIN_FLT_PT_1.dcm", 0),                   # PET rescale
    ("radiography/cr/Barre_CR-MONO1-10-chest.dcm", 0),     # MONOCHROME1
    ("radiography/cr/CR_ModalityLUTSequence_jpll.dcm", 0),  # Modality LUT Sequence, no VOI
    ("radiography/dx/DX_2128x2000_12bit_j2kr.dcm", 0),     # MONOCHROME1 + INVERSE: once
    ("odd/overlay_lut/mlut_18_modality_lut_seq.dcm", 0),   # signed Modality LUT
    ("odd/overlay_lut/vlut_04_voi_lut_seq.dcm", 0),        # VOI LUT Sequence
    ("mammography/GE_MG_3062x2394_jpll.dcm", 0),           # SIGMOID window (and VOI LUTs)
    ("odd/bits_12_in_16/12bitSigned_0x0F0F.dcm", 0),       # bits above Bits Stored
    ("multiframe/enhanced_mr/Philips_fMAP_64x64x64.dcm", 0),  # per-frame functional groups
    ("multiframe/enhanced_mr/Philips_fMAP_64x64x64.dcm", 37),
    ("multiframe/enhanced_ct/NEMA_CT0012_2fr_explicit.dcm", 1),  # shared functional groups
    ("mr_series/single/Siemens_MR_jpll.dcm", 0),           # window width 0: frame range
    ("other/rt/Varian_RTIMAGE_768x1024.dcm", 0),           # window narrower than 1 (Gy)
    ("other/rt/rtdose_32bit_15fr.dcm", 3),                 # 32-bit samples
    ("multiframe/seg/dcmqi_partial_overlaps_1bit.dcm", 2),  # 1-bit samples
    ("odd/deflate/image_dfl.dcm", 0),                      # deflated, kept as received
    ("odd/palette/OT-PAL-8-face.dcm", 0),                  # PALETTE COLOR
    ("odd/palette/US-ALOKA-16_segmented_palette.dcm", 0),  # segmented palette, 16-bit
    ("odd/palette/US_palette_rle_2fr.dcm", 1),
    ("odd/ybr/Mindray_US_rle_YBR_FULL.dcm", 0),            # YBR_FULL (RLE)
    ("odd/ybr/US_YBR_FULL_uncompressed.dcm", 0),           # YBR_FULL stored as HTJ2K
    ("odd/ybr/US_YBR_FULL_422_uncompressed.dcm", 0),       # native YBR_FULL_422
    ("multiframe/us_cine/US_30fr_ybr422_jpeg.dcm", 12),    # JPEG baseline YBR_FULL_422
    ("odd/ybr/WG04_US1_J2KR_ybr_rct.dcm", 0),              # YBR_RCT: RGB once decoded
    ("odd/big_endian/US-RGB-8-epicard_big_endian.dcm", 0),  # US RGB
    ("odd/odd_dims/SC_rgb_32bit_2frame.dcm", 1),           # 32-bit RGB
]


def assert_renders_as(got: npt.NDArray[Any], ref: npt.NDArray[np.uint8], what: str) -> None:
    """Equal to the reference within the tolerance of the module docstring."""
    assert got.dtype == np.uint8 and got.shape == ref.shape, (what, got.shape, ref.shape)
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    assert int(diff.max()) <= (1 if ref.ndim == 2 else 0), (what, int(diff.max()))
    assert np.count_nonzero(diff) <= diff.size // 100, (what, np.count_nonzero(diff))


class Archives:
    """Archives for the corpus: an object whose SOP Instance UID another one already
    has (the corpus has a few such pairs) goes into the next archive."""

    def __init__(self, root: Path):
        self.root, self.open = root, list[Archive]()

    def store(self, path: Path) -> tuple[Archive, str]:
        for archive in self.open:
            try:
                return archive, archive.store(path).sop_instance_uid
            except ConflictError:
                continue
        self.open.append(Archive(self.root / str(len(self.open)), ArchiveConfig(fsync=False)))
        return self.open[-1], self.open[-1].store(path).sop_instance_uid

    def close(self) -> None:
        for archive in self.open:
            archive.close()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archives]:
    found = Archives(tmp_path_factory.mktemp("render"))
    yield found
    found.close()


@pytest.mark.parametrize(("relative", "index"), CASES)
def test_rendering_follows_the_standard(archives: Archives, corpus: Path, relative: str,
                                        index: int) -> None:
    """PS3.3 C.11 (Modality LUT, VOI, Presentation LUT), C.7.6.3 (palette, YBR) as
    pydicom's functions compute them, frame by frame."""
    archive, sop = archives.store(corpus / relative)
    got = Rendering(archive, sop).image(index)
    assert_renders_as(got, reference(corpus / relative, index), relative)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("relative", ["ct_series/single/GE_lung_signed.dcm",
                                      "radiography/cr/WG04_RG3_UNC_1760x1760_mono1.dcm",
                                      "odd/overlay_lut/vlut_04_voi_lut_seq.dcm"])
def test_an_explicit_window_replaces_the_objects_voi(archives: Archives, corpus: Path,
                                                     relative: str, function: str) -> None:
    """window=center,width,function (PS3.18 8.3.5.1.3) with each VOI LUT Function, over
    a window, a MONOCHROME1 image and a VOI LUT Sequence."""
    archive, sop = archives.store(corpus / relative)
    center, width = (40.0, 400.0) if relative.startswith("ct") else (300.0, 255.5)
    got = Rendering(archive, sop).image(0, Window(center, width, function))
    assert_renders_as(got, reference(corpus / relative, 0, (center, width, function)),
                      f"{relative} {function}")


def _renderable() -> list[str]:
    """Every corpus image pydicom decodes, but at most 2 files of each series folder."""
    root = corpus_root()
    if root is None:
        return []
    with open(root / "MANIFEST.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")
                if r["pixel_decode"].startswith("ok") and
                not r["relative_path"].startswith("malformed/")]
    taken: dict[str, int] = {}
    out = []
    for r in rows:
        folder = r["relative_path"].rsplit("/", 1)[0]
        if folder.split("/")[0] in ("ct_series", "mr_series") and \
                not folder.endswith("single") and taken.get(folder, 0) >= 2:
            continue
        taken[folder] = taken.get(folder, 0) + 1
        out.append(r["relative_path"])
    return out


def test_every_renderable_corpus_image(archives: Archives, corpus: Path) -> None:
    """Frame 1 of every image of the corpus pydicom can decode (malformed/ left out;
    ~190 files, ~9 s)."""
    files = _renderable()
    assert len(files) > 100
    for relative in files:
        archive, sop = archives.store(corpus / relative)
        assert_renders_as(Rendering(archive, sop).image(0), reference(corpus / relative),
                          relative)


def test_options_and_refusals(archives: Archives, corpus: Path) -> None:
    """Viewport keeps the aspect; JPEG quality changes the size; bad windows, frames,
    non-images and media types are refused with their reason."""
    archive, sop = archives.store(corpus / "mr_series/tcia_brain_t1post_24sl/1-01.dcm")
    png = render_frame(archive, sop, 0, RenderOptions("image/png", size=(100, 100)))
    assert imagecodecs.png_decode(png).shape == (100, 81)  # 320 x 260 fitted
    small, big = (len(render_frame(archive, sop, 0, RenderOptions(quality=q)))
                  for q in (10, 95))
    assert small < big
    with pytest.raises(ValueError, match="from 1 to 1"):
        render_frame(archive, sop, 1)
    for text, reason in (("40", "center,width"), ("a,b", "center,width"),
                         ("40,400,gamma", "linear-exact"), ("40,0.5", "at least 1")):
        with pytest.raises(ValueError, match=reason):
            Window.parse(text)
    assert Window.parse("40,0.5,linear-exact") == Window(40, 0.5, "LINEAR_EXACT")
    report, sr = archives.store(corpus / "other/sr/SR_latin2_polish.dcm")
    with pytest.raises(Exception, match="no pixel data") as info:
        render_frame(report, sr, 0)
    assert type(info.value).__name__ == "UnsupportedTransferSyntaxError"
    with pytest.raises(Exception, match="image/gif"):
        RenderOptions("image/gif")


def test_one_frame_of_a_kept_multiframe_object_decodes_alone(archives: Archives,
                                                             corpus: Path) -> None:
    """Archive.pixels of an 87-frame JPEG object kept as received decodes the frame
    asked for, not all 87 (it did: ~1 s per rendered frame, a whole cine ~90 s)."""
    path = corpus / "multiframe/us_cine/GE_US_87fr_jpeg.dcm"
    archive, sop = archives.store(path)
    start = time.perf_counter()
    every = archive.frames(sop, None, "native")
    all_frames = time.perf_counter() - start
    start = time.perf_counter()
    one = archive.pixels(sop, 60)
    alone = time.perf_counter() - start
    assert one.tobytes() == every[60]
    assert archive.pixels(sop, 3).tobytes() == every[3]
    assert alone * 5 < all_frames, (alone, all_frames)


# -- through a real `pacscore serve` ------------------------------------------------------
class Server:
    def __init__(self, archive: Path, http: int):
        self.archive = archive
        self.url = f"http://127.0.0.1:{http}/dicom-web"
        self.wado = f"http://127.0.0.1:{http}/wado"
        self.auth = {"Authorization": "Bearer " + (archive / "security" / "admin-token"
                                                   ).read_text().strip()}

    def client(self) -> DICOMwebClient:
        session = requests.Session()
        session.headers.update(self.auth)
        return DICOMwebClient(self.url, session=session)

    def get(self, path: str, accept: str = "image/png", **params: str) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=120,
                            headers={**self.auth, "Accept": accept})


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "archive") as ports:
        yield Server(tmp_path / "archive", ports["http"])


def _path(ds: pydicom.Dataset) -> str:
    return (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def _png(response: requests.Response) -> npt.NDArray[np.uint8]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(imagecodecs.png_decode(response.content))


SERVED = ["ct_series/single/GE_lung_signed.dcm", "radiography/cr/Barre_CR-MONO1-10-chest.dcm",
          "odd/overlay_lut/vlut_04_voi_lut_seq.dcm", "odd/palette/OT-PAL-8-face.dcm",
          "multiframe/us_cine/US_30fr_ybr422_jpeg.dcm", "odd/ybr/Mindray_US_rle_YBR_FULL.dcm",
          "multiframe/enhanced_mr/Philips_fMAP_64x64x64.dcm",
          "odd/bits_12_in_16/12bitSigned_0x0F0F.dcm"]


def test_rendered_routes_match_the_reference(server: Server, corpus: Path) -> None:
    """The PNG a client gets from .../rendered, .../frames/N/rendered and WADO-URI is
    the reference, pixel for pixel (within the tolerance); window=... with a function
    replaces the object's VOI; a thumbnail fits 128 x 128."""
    files = [corpus / f for f in SERVED]
    sent = [read(p) for p in files]
    for ds in sent:  # (some test files name another instance in their File Meta)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    server.client().store_instances(sent)
    for path in files:
        ds = read(path)
        assert_renders_as(_png(server.get(_path(ds) + "/rendered")), reference(path),
                          path.name)
        uri = requests.get(server.wado, headers=server.auth, timeout=120, params={
            "requestType": "WADO", "studyUID": ds.StudyInstanceUID,
            "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID,
            "contentType": "image/png"})
        assert_renders_as(_png(uri), reference(path), f"WADO-URI {path.name}")
    fmap = read(files[6])
    got = _png(server.get(_path(fmap) + "/frames/38/rendered"))
    assert_renders_as(got, reference(files[6], 37), "frame 38")
    ct = read(files[0])
    got = _png(server.get(_path(ct) + "/rendered", window="40,400,sigmoid"))
    assert_renders_as(got, reference(files[0], 0, (40.0, 400.0, "SIGMOID")), "sigmoid")
    thumb = _png(server.get(_path(ct) + "/thumbnail"))
    assert thumb.shape == (128, 128)
    r = server.get(_path(ct) + "/rendered", window="40,0,linear")
    assert r.status_code == 400 and "width" in r.json()["error"]


def _parts(body: bytes, tmp_path: Path) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related body (its boundary read from its first line)."""
    boundary = body.split(b"\r\n", 1)[0][2:].decode()

    async def chunks() -> Any:
        yield body

    out = asyncio.run(parse_related(chunks(), boundary, 1 << 30, tmp_path))
    return [(p.headers["content-type"], p.path.read_bytes()) for p in out]


def test_study_and_series_rendered(server: Server, corpus: Path, tmp_path: Path) -> None:
    """PS3.18 10.4.1.1.3 rendered series (dicomweb-client's retrieve_series_rendered;
    it has no call for a rendered study) and study: every frame of every instance,
    in series and instance number order, each the reference; an instance without
    pixel data in the study is left out with 206 and a Warning naming it."""
    slices = sorted((corpus / "ct_series/dcmqi_ge_ct_3slice").glob("*.dcm"))
    client = server.client()
    client.store_instances([read(p) for p in slices])
    first = read(slices[0])
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    ordered = sorted(slices, key=lambda p: int(read(p).InstanceNumber))
    body = client.retrieve_series_rendered(study, series, media_types=("image/png",))
    parts = _parts(body, tmp_path)
    assert [c for c, _ in parts] == ["image/png"] * 3
    for (_, png), path in zip(parts, ordered, strict=True):
        assert_renders_as(np.asarray(imagecodecs.png_decode(png)), reference(path), path.name)
    r = server.get(f"/studies/{study}/series/{series}/rendered",
                   accept='multipart/related; type="image/jpeg"', viewport="64,64")
    assert r.status_code == 200 and 'type="image/jpeg"' in r.headers["content-type"]
    assert {np.asarray(imagecodecs.jpeg8_decode(p)).shape for _, p in _parts(r.content,
            tmp_path)} == {(64, 64)}
    # A report in the same study: not an image, left out and named.
    report = read(corpus / "other/sr/SR_latin2_polish.dcm")
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                    "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        setattr(report, keyword, first.get(keyword, ""))
    client.store_instances([report])
    r = server.get(f"/studies/{study}/rendered")
    assert r.status_code == 206
    assert "1 of 4 instances left out" in r.headers["warning"]
    assert report.SOPInstanceUID in r.headers["warning"]
    assert len(_parts(r.content, tmp_path)) == 3
    r = server.get(f"/studies/{study}/series/{report.SeriesInstanceUID}/rendered")
    assert r.status_code == 406 and "no pixel data" in r.json()["error"]
    assert server.get(f"/studies/{study}/series/1.2.3/rendered").status_code == 404
    assert server.get(f"/studies/{study}/rendered", accept="image/gif").status_code == 406


def _damaged(source: Path, tmp_path: Path) -> Path:
    """``source`` (JPEG 2000, one frame) with its codestream cut to a third."""
    ds = read(source)
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([stream[: len(stream) // 3]])
    out = tmp_path / "damaged.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out


def test_render_failures_answer_a_reason_not_a_traceback(server: Server, corpus: Path,
                                                         tmp_path: Path) -> None:
    """A stored JPEG 2000 object whose codestream is damaged on disk (kept as received,
    then its file cut: what a bad disk does): every render route answers an error
    status with a JSON reason naming the instance, never a traceback, and the server
    goes on serving."""
    source = corpus / "mr_series/single/Hitachi_T2_sag_j2k.dcm"
    ds = read(source)
    server.client().store_instances([ds])
    location = Archive(server.archive).record(str(ds.SOPInstanceUID)).location
    (blob,) = (p for p in server.archive.rglob(location) if p.is_file())
    shutil.copyfile(_damaged(source, tmp_path), blob)
    base = _path(ds)
    uri = {"requestType": "WADO", "objectUID": str(ds.SOPInstanceUID)}
    for response in (server.get(base + "/rendered"), server.get(base + "/thumbnail"),
                     server.get(base + "/frames/1/rendered", accept="image/jpeg"),
                     requests.get(server.wado, params=uri, headers=server.auth, timeout=60),
                     server.get(base.rsplit("/instances", 1)[0] + "/rendered")):
        assert response.status_code >= 400, response.status_code
        assert "Traceback" not in response.text
        reason = json.loads(response.text)["error"]
        assert str(ds.SOPInstanceUID) in reason, reason
    r = server.get(base + "/frames/2/rendered")
    assert r.status_code == 400 and "from 1 to 1" in r.json()["error"]
    good = read(corpus / "ct_series/single/GE_lung_signed.dcm")
    server.client().store_instances([good])
    assert server.get(_path(good) + "/rendered").status_code == 200
