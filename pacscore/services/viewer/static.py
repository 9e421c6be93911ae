"""``/viewer``: the OHIF build's files, its ``app-config.js``, and single-page routing.

The build lives outside the repository (:mod:`.install`); :class:`ViewerBuild` knows
where it is or why it is not there yet (being installed in the background on a first
start, npm missing, a failed install), and :func:`viewer_files` answers 503 saying so
until it is ready.  A path that names a file of the build is that file (hashed bundle
names are cached for a year, ``immutable``); any other path without a file extension is
a route of the single-page app and gets ``index.html``; a path that leaves the build
(``..``, a symbolic link out) is refused 404 without touching the file system outside.
Every answer carries the cross-origin isolation headers OHIF's volume rendering needs
(``SharedArrayBuffer``: COOP ``same-origin``, COEP ``require-corp``).

Behind a proxy at a path (``public_url`` ``https://host/pacs``, the proxy stripping
``/pacs``), the build's own absolute paths (``/viewer/...`` in ``index.html``, the style
sheets and each webpack runtime, as :mod:`.install` wrote them) are answered with that
prefix (:func:`rebased`, kept in memory once read), and ``app-config.js`` names the
DICOMweb root and the router's base under it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import re
import threading
from pathlib import Path, PurePosixPath

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from .install import PUBLIC_PATH, ViewerInstallError, install, installed

__all__ = ["ISOLATION", "VOI_LUT_FUNCTION_SHIM", "ViewerBuild", "app_config", "viewer_files"]

log = logging.getLogger(__name__)

ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin",
             "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}
"""Headers of every /viewer answer (cross-origin isolation, for MPR/3D)."""
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16,}[.]")  # 2493.bundle.c4af70e46357151f.js
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


class ViewerBuild:
    """Where the viewer's build is, or why it is not (yet) there.

    Parameters
    ----------
    root
        The cache folder of builds (default :func:`.install.cache_dir`).
    """

    def __init__(self, root: Path | None = None):
        self.root = root
        self._lock = threading.Lock()
        self.dist: Path | None = installed(root)
        self.problem: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def installing(self) -> bool:
        """An install runs in the background."""
        return self._thread is not None and self._thread.is_alive()

    def install_in_background(self) -> bool:
        """Start installing unless the build is there or an install runs; True if
        one was started."""
        with self._lock:
            if self.dist is not None or self.installing:
                return False
            self.problem = None
            self._thread = threading.Thread(target=self._install, name="viewer-install",
                                            daemon=True)
            self._thread.start()
            return True

    def _install(self) -> None:
        try:
            dist = install(self.root)
        except ViewerInstallError as exc:
            self.problem = str(exc)
            log.warning("viewer not installed: %s", exc)
            print(f"pacscore: viewer not installed: {exc}", flush=True)
            return
        except Exception as exc:  # a bug or an OS error: said, and the door stays up
            self.problem = f"installing the viewer failed: {type(exc).__name__}: {exc}"
            log.exception("installing the viewer failed")
            return
        self.dist = dist
        print(f"pacscore: viewer ready at {PUBLIC_PATH} ({dist})", flush=True)

    def wait(self, timeout: float | None = None) -> Path | None:
        """Wait for a background install; the build's folder or None."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.dist

    def current(self) -> Path | None:
        """The build's folder now (one installed meanwhile by ``pacscore viewer
        install`` is found without a restart)."""
        if self.dist is None and not self.installing:
            self.dist = installed(self.root)
        return self.dist

    def unavailable(self) -> str:
        """Why the viewer cannot be served now."""
        if self.installing:
            return ("the viewer (OHIF) is being installed on this first start (about "
                    "50 MB from the npm registry): reload in a minute")
        if self.problem:
            return (f"{self.problem}; fix that, run `pacscore viewer install` and reload "
                    f"(no restart needed)")
        return ("the viewer (OHIF) is not installed: run `pacscore viewer install` and "
                "reload (no restart needed)")


VOI_LUT_FUNCTION_SHIM = """/* OHIF 3.13.2's image loader keeps the first character of VOI LUT
   Function (0028,1056) ('S' of SIGMOID, 'L' of LINEAR) and then refuses to draw the image
   ("Invalid VOI LUT function", IMAGE_LOAD_ERROR; cornerstonejs/cornerstone3D#2844): GE
   and Hologic mammograms carry SIGMOID.  A metadata provider ahead of OHIF's hands the loader the
   value under the other key it reads (voiLutFunction), whole.  Drop it when the pinned
   build has the fix. */
(function () {
  var cs, busy = false, seen = new WeakSet();
  function voiLut(type, imageId) {
    if (type !== 'voiLutModule' || busy) return undefined;
    busy = true;
    try {
      var m = cs.metaData.get(type, imageId);
      if (!m || typeof m.voiLUTFunction !== 'string') return undefined;
      return Object.assign({}, m, { voiLUTFunction: undefined,
                                    voiLutFunction: m.voiLUTFunction.trim() });
    } finally { busy = false; }
  }
  Object.defineProperty(window, 'cornerstone', {
    configurable: true, enumerable: true,
    get: function () { return cs; },
    set: function (value) {
      cs = value;
      if (value && value.metaData && !seen.has(value)) {
        seen.add(value);
        value.metaData.addProvider(voiLut, 100000);
      }
    },
  });
})();
"""
"""Part of ``app-config.js``: works around the pinned OHIF build's VOI LUT Function bug."""


def app_config(dicomweb_path: str, prefix: str = "") -> str:
    """OHIF's ``window.config`` for this server: its DICOMweb root on the page's own
    origin (so the session cookie goes along), what its QIDO-RS supports, thumbnails
    from ``/thumbnail``, frames as stored (``transfer-syntax=*``); and
    :data:`VOI_LUT_FUNCTION_SHIM`.  ``prefix``: the path of ``public_url``, before
    every path of this server in the browser."""
    root = json.dumps(prefix + dicomweb_path)
    wado_uri = json.dumps(prefix + dicomweb_path.rsplit("/", 1)[0] + "/wado")
    return f"""/* Written by pacscore: OHIF Viewer configuration for this server. */
{VOI_LUT_FUNCTION_SHIM}
window.config = {{
  routerBasename: {json.dumps(prefix + PUBLIC_PATH.rstrip('/'))},
  extensions: [],
  modes: [],
  showStudyList: true,
  investigationalUseDialog: {{ option: 'never' }},
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: {{ interaction: 100, thumbnail: 5, prefetch: 25 }},
  defaultDataSourceName: 'pacscore',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacscore',
      configuration: {{
        friendlyName: 'pacscore',
        name: 'pacscore',
        wadoUriRoot: window.location.origin + {wado_uri},
        qidoRoot: window.location.origin + {root},
        wadoRoot: window.location.origin + {root},
        qidoSupportsIncludeField: true,
        supportsReject: false,
        supportsStow: true,
        dicomUploadEnabled: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'thumbnail',
        thumbnailRequestStrategy: 'fetch',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        staticWado: false,
        acceptHeader: ['multipart/related; type=application/octet-stream; transfer-syntax=*'],
        bulkDataURI: {{ enabled: true }},
        omitQuotationForMultipartRequest: true,
      }},
    }},
  ],
}};
"""


def _resolve(dist: Path, path: str) -> Path | None:
    """The file ``path`` names inside ``dist``, or None (missing, or it would leave)."""
    parts = PurePosixPath(path).parts
    if any(p in ("..", ".") or "\\" in p or "\x00" in p for p in parts) or \
            (parts and parts[0] == "/"):
        raise _TraversalError(path)
    target = dist.joinpath(*parts) if parts else dist
    try:
        real = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(dist.resolve()):
        raise _TraversalError(path)
    return real if real.is_file() else None


class _TraversalError(Exception):
    """A path that would leave the build."""


# How each kind of file of the build names its own paths ({} the public path).
_PATHS_BY_SUFFIX = {".html": '="{}', ".css": "url({}", ".js": '__webpack_require__.p = "{}"'}
_rebased_cache: dict[tuple[Path, str], tuple[int, bytes | None]] = {}
_rebased_lock = threading.Lock()


def rebased(found: Path, prefix: str) -> bytes | None:
    """The content of build file ``found`` with its own absolute paths under ``prefix``,
    or None when it names none (then served as it is)."""
    template = _PATHS_BY_SUFFIX.get(found.suffix)
    if template is None or not prefix:
        return None
    mtime = found.stat().st_mtime_ns
    with _rebased_lock:
        cached = _rebased_cache.get((found, prefix))
    if cached is not None and cached[0] == mtime:
        return cached[1]
    data = found.read_bytes()
    needle = template.format(PUBLIC_PATH).encode()
    content = data.replace(needle, template.format(prefix + PUBLIC_PATH).encode()) \
        if needle in data else None
    with _rebased_lock:
        _rebased_cache[(found, prefix)] = (mtime, content)
    return content


def _entity_tag(*parts: object) -> str:
    """A strong entity tag naming one version of an answer's body."""
    return '"' + hashlib.blake2b("\x00".join(map(str, parts)).encode(),
                                 digest_size=12).hexdigest() + '"'


def _not_modified(request: Request, etag: str, headers: dict[str, str]) -> Response | None:
    """304 when the browser's copy (``If-None-Match``) is this version (RFC 9110
    13.1.2): the files it revalidates on every visit (``index.html``, the style sheets
    and scripts without a hash in their names, ``app-config.js``) then cost a round trip,
    not their bodies."""
    asked = request.headers.get("if-none-match", "")
    if asked and (asked.strip() == "*" or etag in (t.strip().removeprefix("W/")
                                                   for t in asked.split(","))):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    return None


def viewer_files(build: ViewerBuild, request: Request, path: str,
                 config_js: str, prefix: str = "") -> Response:
    """The answer to ``/viewer/<path>`` (see the module's docstring; ``prefix``: the
    path of ``public_url``).  Each answer carries an ``ETag``; a revalidation of the
    same version gets 304."""
    if path == "app-config.js":
        headers = {**ISOLATION, "Cache-Control": _REVALIDATE}
        etag = _entity_tag(config_js)
        return _not_modified(request, etag, headers) or Response(
            config_js, 200, media_type="text/javascript", headers={**headers, "ETag": etag})
    dist = build.current()
    if dist is None:
        return PlainTextResponse(build.unavailable(), 503,
                                 headers={**ISOLATION, "Retry-After": "30"})
    try:
        found = _resolve(dist, path)
    except _TraversalError:
        return PlainTextResponse("not found", 404, headers=ISOLATION)
    if found is None:
        last = PurePosixPath(path).name
        if "." in last:  # a missing asset, not a page of the app
            return PlainTextResponse("not found", 404, headers=ISOLATION)
        found = dist / "index.html"
    cache = _IMMUTABLE if _HASHED.search(found.name) else _REVALIDATE
    stat = found.stat()
    headers = {**ISOLATION, "Cache-Control": cache}
    etag = _entity_tag(found, stat.st_mtime_ns, stat.st_size, prefix)
    unchanged = _not_modified(request, etag, headers)
    if unchanged is not None:
        return unchanged
    headers["ETag"] = etag
    content = rebased(found, prefix)
    if content is not None:
        return Response(content, 200, media_type=mimetypes.guess_type(found.name)[0],
                        headers=headers)
    return FileResponse(found, headers=headers, stat_result=stat)
