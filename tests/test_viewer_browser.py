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
colour; a 3062 x 2394 mammogram is in the viewport at its full matrix.  And (issue
20.3) a share link opens its study in a fresh browser with no login, while another
study's metadata answers 403 and QIDO lists the shared study alone.

The OHIF build is installed once per session into ``$PACSCORE_VIEWER_CACHE`` (or a
temporary folder); without npm, network, node, playwright-core or chromium the test
skips and says which.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.auth.users import UserStore
from pacscore.services.viewer.install import CACHE_ENV, ViewerInstallError, install
from pacscore.services.viewer.share import share_link, share_study
from pacscore.testing import serve_process
from tests.helpers.screen_compare import coloured, compare

CT = "ct_series/dcmqi_ge_ct_3slice"
US = "multiframe/us_cine/US_30fr_ybr422_jpeg.dcm"  # 30 frames, colour (YBR_FULL_422 JPEG)
# A digitised mammogram, 4664 x 3064, 12 bits, J2K (passed through).  The GE screening
# mammogram (mammography/GE_MG_3062x2394_jpll.dcm, JPEG Lossless SV1, kept as received)
# does not draw: OHIF 3.13.2 reports IMAGE_LOAD_ERROR for its frame (left open).
MG = "mammography/WG04_MG1_J2KI_4664x3064.dcm"
STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"
PASSWORD = "a long passphrase"
FLOW = Path(__file__).parent / "browser" / "viewer_flow.js"
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
    UserStore(root).add("alice", PASSWORD, "read")
    token = share_study(TokenStore(root), STUDY, 3600, read_only=True)
    us_study, mg_study = (pydicom.dcmread(corpus / f, stop_before_pixels=True).StudyInstanceUID
                          for f in (US, MG))
    out = tmp_path / "shots"
    out.mkdir()
    with serve_process(root, doors=("dimse", "http", "grpc"),
                       env={CACHE_ENV: str(viewer_cache)}) as (_, ports):
        done = subprocess.run(
            ["node", str(FLOW), f"http://127.0.0.1:{ports['http']}", "alice", PASSWORD,
             STUDY, "JANCT000", str(out), json.dumps({
                 "share": share_link(f"http://127.0.0.1:{ports['http']}", token),
                 "other": us_study, "us": us_study, "mg": mg_study})],
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
    # A mammogram at full resolution: the image in the viewport is the whole matrix.
    assert seen["mg"]["dimensions"][:2] == [3064, 4664], seen["mg"]
    # 20.3 a share link: no login, its study drawn, another study refused, QIDO its only.
    assert seen["shareOpened"] == f"/viewer/viewer?StudyInstanceUIDs={STUDY}"
    assert set(seen["shareStatuses"]) <= {200, 304}, seen["shareStatuses"]
    assert seen["shareOther"] == {"metadata": 403, "studies": [STUDY]}
