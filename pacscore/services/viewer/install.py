"""The pinned OHIF Viewer build: fetched with npm, verified, unpacked outside the repository.

``pacscore viewer install`` (and ``pacscore serve`` on a first start, in the background)
runs ``npm pack @ohif/app@<OHIF_VERSION>``, checks the tarball's SHA-512 against
:data:`OHIF_INTEGRITY` (npm's ``dist.integrity`` of that version, pinned here: a
tarball the registry, a mirror or a cache swapped is refused), and unpacks only the
prebuilt static app (``package/dist``) without the optional onnxruntime (``ort/``,
136 MB) and the microscopy viewer (20 MB).  Regular files and folders only, each name
checked to stay inside the target.  The build is made in a private temporary folder
beside its final place and renamed into place when complete, so a crash or a
concurrent install never leaves a half-written viewer that ``serve`` would use.

OHIF's prebuilt files expect to live at ``/``; pacscore serves them at ``/viewer/``, so
the unpacked copy is rewritten once (:data:`PUBLIC_PATH`): the page's own links and
``window.PUBLIC_URL``, the style sheets' ``url(/...)`` and each webpack runtime's
``__webpack_require__.p``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ...errors import PacsError

__all__ = ["AUTO_INSTALL_ENV", "CACHE_ENV", "OHIF_INTEGRITY", "OHIF_PACKAGE", "OHIF_VERSION",
           "PUBLIC_PATH", "ViewerInstallError", "build_dir", "cache_dir", "install", "installed",
           "unpack", "verify_integrity"]

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = ("sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87"
                  "BKxFfpq+jd5xXZB9E8EA==")
"""``npm view @ohif/app@3.13.2 dist.integrity`` (SRI, SHA-512 of the tarball)."""
AUTO_INSTALL_ENV = "PACSCORE_VIEWER_AUTO_INSTALL"
"""``0``: ``serve`` does not fetch a missing build on its first start (air-gapped sites
install it with ``pacscore viewer install --cache``; the test suite sets it)."""
CACHE_ENV = "PACSCORE_VIEWER_CACHE"
"""Environment variable naming the folder that holds installed builds (tests share one)."""
PUBLIC_PATH = "/viewer/"
"""Where the viewer is served on pacscore's origin."""
_DIST = PurePosixPath("package/dist")
_LEFT_OUT = ("ort", "dicom-microscopy-viewer")  # optional, 156 MB: not served
_MARKER = "pacscore-viewer.json"
_WEBPACK_ROOT = b'__webpack_require__.p = "/"'
_NPM_TIMEOUT = 900.0


class ViewerInstallError(PacsError, RuntimeError):
    """The viewer could not be installed (npm missing, network, integrity mismatch)."""


def cache_dir() -> Path:
    """Where builds are kept: ``$PACSCORE_VIEWER_CACHE``, else
    ``$XDG_CACHE_HOME/pacscore/viewer`` (``~/.cache/pacscore/viewer``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pacscore" / "viewer"


def build_dir(root: Path | None = None, version: str = OHIF_VERSION) -> Path:
    """The folder of an installed build (its ``dist`` holds the static app)."""
    return (root or cache_dir()) / version


def installed(root: Path | None = None, version: str = OHIF_VERSION) -> Path | None:
    """The ``dist`` folder of a complete install, or None."""
    folder = build_dir(root, version)
    return folder / "dist" if (folder / _MARKER).is_file() else None


def verify_integrity(tarball: Path, integrity: str = OHIF_INTEGRITY) -> None:
    """Raise :class:`ViewerInstallError` unless ``tarball``'s SHA-512 is ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    digest = hashlib.new(algorithm)
    with open(tarball, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    found = base64.b64encode(digest.digest()).decode()
    if found != expected:
        raise ViewerInstallError(
            f"{tarball.name}: integrity {algorithm}-{found} is not the pinned "
            f"{integrity}; refused (a changed or corrupted package)",
            hint="remove npm's cached copy (npm cache clean --force) and try again; if it "
                 "persists, the registry serves another file than the one pinned")


def _kept(name: str) -> PurePosixPath | None:
    """The path under ``dist`` a member is unpacked to, or None when left out."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    try:
        inner = path.relative_to(_DIST)
    except ValueError:
        return None
    if not inner.parts or inner.parts[0] in _LEFT_OUT:
        return None
    return inner


def unpack(tarball: Path, target: Path) -> int:
    """Unpack the static app of ``tarball`` into ``target/dist`` (regular files and
    folders only; optional parts left out); return the number of files."""
    dist = target / "dist"
    dist.mkdir(parents=True)
    count = 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            inner = _kept(member.name)
            if inner is None or not (member.isfile() or member.isdir()):
                continue
            out = dist.joinpath(*inner.parts)
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with source, open(out, "wb") as f:
                shutil.copyfileobj(source, f, 1 << 20)
            count += 1
    return count


def _rebase(dist: Path, public_path: str = PUBLIC_PATH) -> None:
    """Rewrite the build for ``public_path`` (see the module's docstring)."""
    index = dist / "index.html"
    html = index.read_text(encoding="utf-8")
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{public_path}"')
    html = re.sub(r'(href|src)="/(?!/)', rf'\1="{public_path}', html)
    index.write_text(html, encoding="utf-8")
    for sheet in dist.glob("*.css"):  # fonts: url(/a34f9d1faa5f3315.woff2)
        css = sheet.read_text(encoding="utf-8")
        sheet.write_text(re.sub(r"url\(/(?!/)", f"url({public_path}", css), encoding="utf-8")
    new_root = f'__webpack_require__.p = "{public_path}"'.encode()
    for script in dist.glob("*.js"):
        data = script.read_bytes()
        if _WEBPACK_ROOT in data:
            script.write_bytes(data.replace(_WEBPACK_ROOT, new_root))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One installer at a time per cache folder (serve and a test may race)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _npm_pack(into: Path, version: str) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerInstallError(
            "npm is not installed: the viewer (OHIF) is fetched with it",
            hint="install Node.js and npm (Debian: apt-get install npm), then run "
                 "`pacscore viewer install`")
    try:
        done = subprocess.run([npm, "pack", f"{OHIF_PACKAGE}@{version}", "--json",
                               "--pack-destination", str(into)],
                              capture_output=True, text=True, timeout=_NPM_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ViewerInstallError(f"npm pack {OHIF_PACKAGE}@{version} took longer than "
                                 f"{_NPM_TIMEOUT:.0f} s", hint="check the network") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ViewerInstallError(
            f"npm pack {OHIF_PACKAGE}@{version} failed: {' | '.join(tail)}",
            hint="check the network and npm's registry setting (npm config get registry)")
    try:
        name = json.loads(done.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise ViewerInstallError(f"npm pack printed no package file name: "
                                 f"{done.stdout[:200]!r}") from exc
    tarball = into / PurePosixPath(name).name
    if not tarball.is_file():
        raise ViewerInstallError(f"npm pack did not write {tarball}")
    return tarball


def install(root: Path | None = None, *, tarball: Path | None = None,
            version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY) -> Path:
    """Install the pinned build (unless it is there); return its ``dist`` folder.

    ``tarball`` installs from a file already fetched (checked the same way) instead of
    running npm.

    Raises
    ------
    ViewerInstallError
        npm missing or failing, or a tarball that is not the pinned one.
    """
    root = root or cache_dir()
    done = installed(root, version)
    if done is not None:
        return done
    with _locked(root):
        done = installed(root, version)  # another installer finished meanwhile
        if done is not None:
            return done
        for left in root.glob(".install-*"):  # of an installer killed midway (we hold
            shutil.rmtree(left, ignore_errors=True)  # the lock: no other runs)
        work = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
        try:
            source = tarball if tarball is not None else _npm_pack(work, version)
            verify_integrity(source, integrity)
            build = work / "build"
            files = unpack(source, build)
            if not (build / "dist" / "index.html").is_file():
                raise ViewerInstallError(f"{source.name} holds no package/dist/index.html")
            _rebase(build / "dist")
            (build / _MARKER).write_text(json.dumps(
                {"package": OHIF_PACKAGE, "version": version, "integrity": integrity,
                 "files": files, "public_path": PUBLIC_PATH}), encoding="utf-8")
            final = build_dir(root, version)
            if final.exists():  # an incomplete folder of an older pacscore: replace it
                shutil.rmtree(final)
            os.rename(build, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    done = installed(root, version)
    assert done is not None
    return done
