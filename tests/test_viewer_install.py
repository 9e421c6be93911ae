"""Issue 20.1: ``pacscore viewer install`` takes only the pinned, checksum-verified OHIF
build, unpacks only its static app (no ``ort/``, no microscopy, nothing outside the
target, no links), rebased for ``/viewer/``, and publishes it by one rename.  Fake
tarballs here (no network); the real package in tests/test_viewer.py."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from pacscore.services.viewer.install import (
    OHIF_INTEGRITY,
    ViewerInstallError,
    build_dir,
    install,
    installed,
)
from pacscore.testing import cli

INDEX = (b'<!doctype html><html><head><link rel="manifest" href="/manifest.json">'
         b'<script src="/app-config.js"></script><script>window.PUBLIC_URL="/"</script>'
         b'<script defer src="/app.bundle.0123456789abcdef.js"></script>'
         b'<a href="//elsewhere.example/x">x</a></head></html>')
BUNDLE = b'(()=>{__webpack_require__.p = "/";})();'


def _tarball(path: Path, extra: list[tarfile.TarInfo] | None = None) -> str:
    """A package like OHIF's with parts to leave out; its SRI integrity."""
    files = {"package/package.json": b"{}",
             "package/dist/index.html": INDEX,
             "package/dist/app.bundle.0123456789abcdef.js": BUNDLE,
             "package/dist/assets/logo.svg": b"<svg/>",
             "package/dist/app.bundle.css": b"@font-face{src:url(/a1.woff2)}a{b:url(//x/y)}",
             "package/dist/ort/ort-wasm.wasm": b"x" * 100,
             "package/dist/dicom-microscopy-viewer/dmv.js": b"y"}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _evil() -> list[tarfile.TarInfo]:
    out = []
    for name in ("package/dist/../../escaped.txt", "/abs/escaped.txt"):
        info = tarfile.TarInfo(name)
        info.size = 4
        out.append(info)
    link = tarfile.TarInfo("package/dist/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("package/dist/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "package/package.json"
    return [*out, link, hard]


def test_install_keeps_only_the_static_app_rebased(tmp_path: Path) -> None:
    tgz = tmp_path / "ohif.tgz"
    integrity = _tarball(tgz, _evil())
    root = tmp_path / "cache"
    dist = install(root, tarball=tgz, integrity=integrity)
    assert dist == build_dir(root) / "dist" == installed(root)
    found = sorted(str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file())
    assert found == ["app.bundle.0123456789abcdef.js", "app.bundle.css", "assets/logo.svg",
                     "index.html"]
    assert (dist / "app.bundle.css").read_bytes() == \
        b"@font-face{src:url(/viewer/a1.woff2)}a{b:url(//x/y)}"
    assert not any(p.is_symlink() for p in dist.rglob("*"))
    assert not list(tmp_path.rglob("escaped.txt"))
    html = (dist / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in html
    assert 'href="/viewer/manifest.json"' in html and 'src="/viewer/app-config.js"' in html
    assert 'href="//elsewhere.example/x"' in html  # protocol-relative: untouched
    assert (dist / "app.bundle.0123456789abcdef.js").read_bytes() == \
        b'(()=>{__webpack_require__.p = "/viewer/";})();'
    # Nothing left beside the build (the temporary folder went), and a second install
    # is a no-op that does not even read the tarball.
    assert sorted(p.name for p in root.iterdir()) == [".install.lock", "3.13.2"]
    tgz.unlink()
    assert install(root, tarball=tgz, integrity=integrity) == dist


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    tgz = tmp_path / "ohif.tgz"
    _tarball(tgz)
    root = tmp_path / "cache"
    with pytest.raises(ViewerInstallError, match="not the pinned") as caught:
        install(root, tarball=tgz)  # the real pin: this fake does not match it
    assert OHIF_INTEGRITY in str(caught.value) and caught.value.hint
    assert installed(root) is None
    assert sorted(p.name for p in root.iterdir()) == [".install.lock"]  # no half build


def test_an_interrupted_install_is_never_served_and_is_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "3.13.2" / "dist").mkdir(parents=True)  # no marker: not complete
    (root / ".install-killed").mkdir()
    assert installed(root) is None
    tgz = tmp_path / "ohif.tgz"
    dist = install(root, tarball=tgz, integrity=_tarball(tgz))
    assert (dist / "index.html").is_file()
    assert not (root / ".install-killed").exists()


def test_without_npm_the_cli_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "PACSCORE_VIEWER_CACHE": str(tmp_path / "c")}
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "pacscore.cli", "viewer", "install"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2
    assert "npm is not installed" in done.stderr and "apt-get install npm" in done.stderr
    status = subprocess.run([sys.executable, "-m", "pacscore.cli", "viewer", "status"],
                            capture_output=True, text=True, env=env, check=False)
    assert status.returncode == 1 and "not installed" in status.stdout
    assert cli("--version")
