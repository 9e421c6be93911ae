"""Issue 20.4: the viewer in a real Chromium against a real ``pacscore serve``.

Node drives Debian's /usr/bin/chromium through npm ``playwright-core`` (no browser
download; ``.ci/run`` installs it outside the repository and sets
``PACSCORE_PLAYWRIGHT``): log in, the study list shows the corpus CT, search by name,
open it, scroll to the last slice.  What the viewport's canvas holds (its own pixels,
no HTML overlays) is compared with the slice rendered from the file with its window
(40/400) by :mod:`tests.helpers.screen_compare`: the expected slice must be the best
match with correlation >= 0.99 and mean absolute difference <= 3 grey levels (measured:
0.998 and 1.4; the neighbouring slice scores 0.986 and 4.3).

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

import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.services.auth.users import UserStore
from pacscore.services.viewer.install import CACHE_ENV, ViewerInstallError, install
from pacscore.testing import serve_process
from tests.helpers.screen_compare import compare

CT = "ct_series/dcmqi_ge_ct_3slice"
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
    UserStore(root).add("alice", PASSWORD, "read")
    out = tmp_path / "shots"
    out.mkdir()
    with serve_process(root, doors=("dimse", "http", "grpc"),
                       env={CACHE_ENV: str(viewer_cache)}) as (_, ports):
        done = subprocess.run(
            ["node", str(FLOW), f"http://127.0.0.1:{ports['http']}", "alice", PASSWORD,
             STUDY, "JANCT000", str(out)], capture_output=True, text=True, timeout=300,
            env={**os.environ, "PACSCORE_PLAYWRIGHT": playwright,
                 "PACSCORE_CHROMIUM": CHROMIUM}, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, f"the browser script printed nothing: {done.stderr[-2000:]}"
    seen = json.loads(lines[-1])
    assert "error" not in seen, seen
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
