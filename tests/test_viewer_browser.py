"""Issue 20.4: the viewer in a real Chromium against a real ``pacscore serve``.

Node drives Debian's /usr/bin/chromium through npm ``playwright-core`` (no browser
download; ``.ci/run`` installs it outside the repository and sets
``PACSCORE_PLAYWRIGHT``): log in, the study list shows the corpus CT, search by name,
open it, scroll to the last slice.  What the viewport's canvas holds (its own pixels,
no HTML overlays) is compared with the slice rendered from the file with its window
(40/400) by :mod:`tests.helpers.screen_compare`: the expected slice must be the best
match with correlation >= 0.99 and mean absolute difference <= 3 grey levels (measured:
0.998 and 1.4; the neighbouring slice scores 0.986 and 4.3).

Then (issue 20.6) what a radiologist expects: OHIF's lung window preset (hotkey 2) sets
the viewport's VOI to -1350..150 and the canvas matches the slice in that window; a
30-frame colour US (YBR_FULL_422 JPEG) shows frame 1 and, five wheel steps on, the frame
cornerstone reports, each the best match of the 30 frames (grey mean of R, G, B), and in
colour; its cine plays (frames advance and wrap around, the pixels change) and pauses;
a 4664 x 3064 digitised mammogram is in the viewport at its full matrix, and so is GE's
3062 x 2394 screening mammogram (JPEG Lossless, VOI LUT Function SIGMOID), drawn through
that sigmoid (see :data:`pacscore.services.viewer.static.VOI_LUT_FUNCTION_SHIM`).  And
(issue 20.3) a share link opens its study in a fresh browser with no login, while
another study's metadata answers 403 and QIDO lists the shared study alone.

The second test works on a 30-slice CT volume (tests/browser/viewer_volume.js): a
length drawn, tracked and saved by OHIF's "Create SR" arrives by STOW-RS as an SR that
QIDO lists and that holds the length; opening the study again shows it in the SR's
viewport and OHIF takes it back into its list with the same length; OHIF's MPR layout
shows an axial, a sagittal and a coronal view, each the best match (correlation >= 0.98,
mean absolute difference <= 8 grey levels; measured 0.99 and 4-5) of the plane through
the camera's focal point in a numpy reformat of the volume against the planes 4, 8 and
16 voxels away (0.94 and 10-13 at 4 voxels).

The third (tests/browser/viewer_prefix.js) puts the viewer behind a proxy at a path
(``--public-url .../pacs``, the proxy stripping ``/pacs``): the login, OHIF's files,
its configuration and DICOMweb all go through ``/pacs`` (nothing asked outside it) and
the CT is drawn.

The OHIF build is installed once per session into ``$PACSCORE_VIEWER_CACHE`` (or a
temporary folder); without npm, network, node, playwright-core or chromium the test
skips and says which.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import pydicom
import pytest
import requests
from pydicom.encaps import generate_frames

from pacscore import Archive, ArchiveConfig
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.auth.users import UserStore
from pacscore.services.viewer.install import CACHE_ENV, ViewerInstallError, install
from pacscore.services.viewer.share import share_link, share_study
from pacscore.testing import serve_process
from tests.helpers.screen_compare import (
    coloured,
    compare,
    compare_image,
    reformat,
    sigmoid,
    windowed,
)

CT = "ct_series/dcmqi_ge_ct_3slice"
US = "multiframe/us_cine/US_30fr_ybr422_jpeg.dcm"  # 30 frames, colour (YBR_FULL_422 JPEG)
# A digitised mammogram, 4664 x 3064, 12 bits, J2K (passed through); and GE's screening
# mammogram, JPEG Lossless SV1 kept as received, whose VOI LUT Function is SIGMOID.
MG = "mammography/WG04_MG1_J2KI_4664x3064.dcm"
MG_GE = "mammography/GE_MG_3062x2394_jpll.dcm"
VOLUME = "ct_series/tcia_lung_pet_ct_dx_chest_30sl"  # 30 axial slices, 8 mm apart
STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"
PASSWORD = "a long passphrase"
FLOW = Path(__file__).parent / "browser" / "viewer_flow.js"
VOLUME_FLOW = Path(__file__).parent / "browser" / "viewer_volume.js"
PREFIX_FLOW = Path(__file__).parent / "browser" / "viewer_prefix.js"
CHROMIUM = os.environ.get("PACSCORE_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def viewer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the real OHIF build, installed once per session."""
    root = Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else \
        tmp_path_factory.mktemp("viewer-cache")
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the OHIF build cannot be fetched")
    try:
        install(root)
    except ViewerInstallError as exc:
        pytest.skip(f"the OHIF build could not be installed (network?): {exc}")
    return root


@pytest.fixture(scope="session")
def playwright() -> str:
    found = os.environ.get("PACSCORE_PLAYWRIGHT", "")
    if not found or not (Path(found) / "package.json").is_file():
        pytest.skip("npm playwright-core not found: set PACSCORE_PLAYWRIGHT to its folder "
                    "(.ci/run installs it)")
    if shutil.which("node") is None or not Path(CHROMIUM).exists():
        pytest.skip(f"node or {CHROMIUM} is missing (.ci/run installs chromium)")
    return found


@pytest.mark.slow
def test_log_in_find_the_ct_and_see_its_slices(tmp_path: Path, corpus: Path,
                                               playwright: str, viewer_cache: Path) -> None:
    root = tmp_path / "archive"
    with Archive(root, ArchiveConfig()) as archive:
        for f in sorted((corpus / CT).glob("*.dcm")):
            archive.store(f)
        archive.store(corpus / US)
        archive.store(corpus / MG)
        archive.store(corpus / MG_GE)
    UserStore(root).add("alice", PASSWORD, "read")
    token = share_study(TokenStore(root), STUDY, 3600, read_only=True)
    us_study, mg_study, ge_study = (
        pydicom.dcmread(corpus / f, stop_before_pixels=True).StudyInstanceUID
        for f in (US, MG, MG_GE))
    out = tmp_path / "shots"
    out.mkdir()
    with serve_process(root, doors=("dimse", "http", "grpc"),
                       env={CACHE_ENV: str(viewer_cache)}) as (_, ports):
        done = subprocess.run(
            ["node", str(FLOW), f"http://127.0.0.1:{ports['http']}", "alice", PASSWORD,
             STUDY, "JANCT000", str(out), json.dumps({
                 "share": share_link(f"http://127.0.0.1:{ports['http']}", token),
                 "other": us_study, "us": us_study, "mg": mg_study,
                 "mgSigmoid": ge_study})],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PACSCORE_PLAYWRIGHT": playwright,
                 "PACSCORE_CHROMIUM": CHROMIUM}, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, f"the browser script printed nothing: {done.stderr[-2000:]}"
    seen = json.loads(lines[-1])
    (out / "seen.json").write_text(lines[-1])
    assert "error" not in seen, (seen["error"][:1500], seen["consoleErrors"], seen["steps"])
    assert seen["loginUrl"] == "/login"  # the viewer asked for a login first
    assert seen["studyListShowsPatient"] and seen["searchFinds"]
    assert seen["failedRequests"] == [] and seen["consoleErrors"] == []
    print(f"first image {seen['firstImageMs']} ms after opening the viewer URL (logged "
          f"in, assets cached by the study list); cold (empty cache) "
          f"{seen['coldFirstImageMs']} ms")
    slices = sorted((corpus / CT).glob("*.dcm"))
    for shot, expected in (("slice-first.png", slices[0]), ("slice-scrolled.png", slices[-1])):
        png = (out / shot).read_bytes()
        scores = {f.name: compare(png, f) for f in slices}
        best = max(scores, key=lambda name: scores[name][0])
        corr, mad = scores[expected.name]
        assert best == expected.name, (shot, scores)
        assert corr >= 0.99 and mad <= 3.0, (shot, scores)

    # 20.6 window presets: hotkey 2 (OHIF's lung preset, W 1500 / L -600) on the last
    # slice; the canvas matches that slice rendered with that window.
    assert seen["afterPreset"]["voi"] != seen["beforePreset"]["voi"], seen
    low, high = seen["afterPreset"]["voi"]["lower"], seen["afterPreset"]["voi"]["upper"]
    # W 1500 / L -600: -1350..150 (cornerstone keeps the upper bound one below: 149)
    assert round(low) == -1350 and round(high) in (149, 150), seen["afterPreset"]
    png = (out / "preset-lung.png").read_bytes()
    corr, mad = compare(png, slices[-1], window=(-600.0, 1500.0))
    assert corr >= 0.99 and mad <= 3.0, (corr, mad)
    assert compare(png, slices[-1])[1] > 3 * mad  # not the file's own window any more
    # Multi-frame colour US: the first frame, then five frames on by the wheel; each
    # screenshot is best matched by the frame cornerstone says it shows; in colour.
    assert seen["usFirst"]["count"] == 30 and seen["usFirst"]["index"] == 0, seen["usFirst"]
    shown = seen["usScrolled"]["index"]
    assert 1 <= shown < 30, seen["usScrolled"]
    for shot, index in (("us-first.png", 0), ("us-scrolled.png", shown)):
        png = (out / shot).read_bytes()
        scores = [compare(png, corpus / US, frame=f) for f in range(30)]
        best = max(range(30), key=lambda f: scores[f][0])
        assert best == index and scores[index][0] >= 0.98, (shot, index, scores[index])
        shown_colour, source_colour = coloured(png, corpus / US, index)
        assert source_colour > 0.005 and shown_colour >= 0.5 * source_colour, (
            shot, shown_colour, source_colour)  # colour shown as colour (measured ~1%)
    # Cine: playing, the frame shown advances (and wraps around past the last), the
    # pixels change with it; paused, it stays.
    cine = seen["cine"]
    indices = [s["index"] for s in cine["samples"]]
    assert cine["playing"] and len(set(indices)) >= 8, cine
    assert any(b < a for a, b in itertools.pairwise(indices)), indices  # wrapped around
    assert len({s["pixels"] for s in cine["samples"]}) >= 8, cine
    assert cine["stillPaused"] == cine["paused"], cine
    # Mammograms at full resolution: the image in the viewport is the whole matrix.
    assert seen["mg"]["dimensions"][:2] == [3064, 4664], seen["mg"]
    assert seen["mgSigmoid"]["dimensions"][:2] == [2394, 3062], seen["mgSigmoid"]
    # GE's drawn through its first window (2653/900) and its VOI LUT Function: SIGMOID
    # (measured: correlation 0.9997, 0.3 grey levels; the linear window 3.6).
    assert seen["mgSigmoid"]["voiFunction"] == "SIGMOID", seen["mgSigmoid"]
    ge = pydicom.dcmread(corpus / MG_GE)
    stored = imagecodecs.ljpeg_decode(next(generate_frames(ge.PixelData, number_of_frames=1)))
    png = (out / "mgSigmoid.png").read_bytes()
    corr, mad = compare_image(png, sigmoid(stored.astype(float), 2653.0, 900.0))
    assert corr >= 0.99 and mad <= 1.5, (corr, mad)
    assert compare_image(png, windowed(stored.astype(float), 2653.0, 900.0))[1] > 2 * mad
    # 20.3 a share link: no login, its study drawn, another study refused, QIDO its only.
    assert seen["shareOpened"] == f"/viewer/viewer?StudyInstanceUIDs={STUDY}"
    assert set(seen["shareStatuses"]) <= {200, 304}, seen["shareStatuses"]
    assert seen["shareOther"] == {"metadata": 403, "studies": [STUDY]}


@pytest.mark.slow
def test_a_measurement_saved_as_sr_and_the_mpr_of_a_ct_volume(
        tmp_path: Path, corpus: Path, playwright: str, viewer_cache: Path) -> None:
    root = tmp_path / "archive"
    slices = sorted((corpus / VOLUME).glob("*.dcm"))
    with Archive(root, ArchiveConfig()) as archive:
        for f in slices:
            archive.store(f)
    UserStore(root).add("alice", PASSWORD, "write")  # STOW-RS of the SR needs write
    study = pydicom.dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID
    out = tmp_path / "shots"
    out.mkdir()
    with serve_process(root, doors=("dimse", "http", "grpc"),
                       env={CACHE_ENV: str(viewer_cache)}) as (_, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        done = subprocess.run(
            ["node", str(VOLUME_FLOW), base, "alice", PASSWORD, study, str(out)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PACSCORE_PLAYWRIGHT": playwright,
                 "PACSCORE_CHROMIUM": CHROMIUM}, check=False)
        lines = done.stdout.strip().splitlines()
        assert lines, f"the browser script printed nothing: {done.stderr[-2000:]}"
        seen = json.loads(lines[-1])
        (out / "seen.json").write_text(lines[-1])
        assert "error" not in seen, (seen["error"][:1500], seen["consoleErrors"], seen["steps"])
        assert seen["failedRequests"] == [] and seen["consoleErrors"] == []
        # The SR as the archive holds it, read back with the admin token.
        admin = (root / "security" / "admin-token").read_text().strip()
        headers = {"Authorization": f"Bearer {admin}"}
        series = requests.get(f"{base}/dicom-web/studies/{study}/series",
                              params={"Modality": "SR"}, headers=headers, timeout=30).json()
        assert len(series) == 1, series
        sr_series = series[0]["0020000E"]["Value"][0]
        metadata = requests.get(f"{base}/dicom-web/studies/{study}/series/{sr_series}/metadata",
                                headers=headers, timeout=30).json()
    # Drawn, tracked, stored: STOW-RS answered 200 and QIDO lists the SR series.
    (drawn,) = seen["drawn"]
    assert drawn["tool"] == "Length" and 10 < drawn["mm"] < 300, drawn
    assert seen["stow"]["status"] == 200, seen["stow"]
    assert seen["stow"]["contentType"].startswith("multipart/related"), seen["stow"]
    assert seen["qido"]["status"] == 200 and [s["uid"] for s in seen["qido"]["series"]] == \
        [sr_series], seen["qido"]
    (sr,) = metadata
    assert sr["00080060"]["Value"] == ["SR"], sr["00080060"]
    values = [float(v) for v in _numeric_values(sr)]
    assert any(abs(v - drawn["mm"]) < 0.01 for v in values), (values, drawn)
    # Opened again: the SR's viewport shows the length, and OHIF takes it back.
    assert seen["reopened"]["viewport"] == ["SR"], seen["reopened"]
    assert any(f"{drawn['mm']:.2f} mm" in text for text in seen["reopened"]["shown"]), seen
    (restored,) = seen["restored"]
    assert restored["tool"] == "Length" and restored["series"] == drawn["series"]
    assert abs(restored["mm"] - drawn["mm"]) < 0.01, (restored, drawn)
    # MPR: three orthographic views; each the plane through its focal point.
    views = {v["id"]: v for v in seen["mpr"]}
    assert set(views) == {"mpr-axial", "mpr-sagittal", "mpr-coronal"}, views
    assert all(v["type"] == "orthographic" for v in views.values())
    axial = (out / "mpr-axial.png").read_bytes()
    z = views["mpr-axial"]["focalPoint"][2]
    at_z = min(slices, key=lambda f: abs(
        float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) - z))
    scores = {f.name: compare(axial, f) for f in slices}
    assert max(scores, key=lambda n: scores[n][0]) == at_z.name, scores
    assert scores[at_z.name][0] >= 0.98 and scores[at_z.name][1] <= 8, scores[at_z.name]
    spacing = float(pydicom.dcmread(slices[0], stop_before_pixels=True).PixelSpacing[0])
    for plane, axis, normal in (("sagittal", 0, [1, 0, 0]), ("coronal", 1, [0, -1, 0])):
        view = views[f"mpr-{plane}"]
        assert view["normal"] == normal and view["up"] == [0, 0, 1], view  # head up
        low, high = view["voi"]["lower"], view["voi"]["upper"]
        window = ((low + high) / 2, high - low + 1)
        png = (out / f"mpr-{plane}.png").read_bytes()
        at = view["focalPoint"][axis]
        scores_mm = {off: compare_image(png, reformat(slices, plane, at + off * spacing, window))
                     for off in (-16, -8, -4, 0, 4, 8, 16)}
        assert max(scores_mm, key=lambda o: scores_mm[o][0]) == 0, (plane, scores_mm)
        corr, mad = scores_mm[0]
        assert corr >= 0.98 and mad <= 8, (plane, scores_mm)


@pytest.mark.slow
def test_behind_a_proxy_at_a_path(tmp_path: Path, corpus: Path, playwright: str,
                                  viewer_cache: Path) -> None:
    # public_url .../pacs and a proxy that strips /pacs: the login, OHIF's files, its
    # configuration and DICOMweb all go through /pacs, and the CT is drawn.
    root = tmp_path / "archive"
    slices = sorted((corpus / CT).glob("*.dcm"))
    with Archive(root, ArchiveConfig()) as archive:
        for f in slices:
            archive.store(f)
    UserStore(root).add("alice", PASSWORD, "read")
    out = tmp_path / "shots"
    out.mkdir()
    # The proxy's port is chosen by the script; public_url only needs the right path
    # for what the browser sees (app-config.js uses the page's own origin).
    with serve_process(root, "--public-url", "http://127.0.0.1:9/pacs",
                       doors=("dimse", "http", "grpc"),
                       env={CACHE_ENV: str(viewer_cache)}) as (_, ports):
        done = subprocess.run(
            ["node", str(PREFIX_FLOW), str(ports["http"]), "alice", PASSWORD, STUDY, str(out)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PACSCORE_PLAYWRIGHT": playwright,
                 "PACSCORE_CHROMIUM": CHROMIUM}, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, f"the browser script printed nothing: {done.stderr[-2000:]}"
    seen = json.loads(lines[-1])
    assert "error" not in seen, (seen["error"][:1500], seen["consoleErrors"], seen["misses"])
    assert seen["loginUrl"] == "/pacs/login" and seen["afterLogin"] == "/pacs/viewer/", seen
    assert seen["misses"] == [] and seen["failedRequests"] == [], seen
    assert seen["consoleErrors"] == [], seen["consoleErrors"]
    assert seen["drawn"] and seen["state"]["count"] == len(slices), seen["state"]


def _numeric_values(item: object) -> list[str]:
    """Every Numeric Value (0040,A30A) anywhere in a DICOM JSON object."""
    found: list[str] = []
    if isinstance(item, dict):
        for tag, element in item.items():
            if tag == "0040A30A":
                found.extend(str(v) for v in element.get("Value", []))
            else:
                found.extend(_numeric_values(element))
    elif isinstance(item, list):
        for element in item:
            found.extend(_numeric_values(element))
    return found
