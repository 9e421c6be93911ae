"""Series metadata in the DICOM JSON model (PS3.18 F.2), precomputed per series: what
WADO-RS ``.../metadata`` answers (and any door that serves the JSON model).

Viewers open a study through ``.../series/{uid}/metadata``; building it means parsing
every instance's header (about 1 ms each), far over the time a viewer waits for a
500-instance series.  So the JSON of a series is built once, in the background, when
the series has been quiet for ``quiet`` seconds after its last stored instance, and
kept (least recently used out beyond a byte budget) with the series' change stamp
(:meth:`Archive.changed`) and the patient correction stamp (:mod:`.overlay`): a later
store or delete under the series, or a correction, changes the stamp and the next
request rebuilds it, from the instances already converted.  The request's
base URL is not known in advance: bulk data URIs are kept with a placeholder that is
replaced, JSON-escaped, when answering.

What the archive keeps is answered whatever it holds: an element whose value cannot be
converted to JSON (a DS of ``200&0``, a US of odd length, a broken private element)
goes out as it was received, VR UN (PS3.18 F.2.7 InlineBinary or a BulkDataURI), and is
named by :meth:`SeriesMetadata.problems`; a header that cannot be read at all gives the
instance's identifiers from the index.  Neither fails the series.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement

from .archive import Archive, StoreResult
from .errors import PacsError
from .index import InstanceRecord

__all__ = ["SeriesMetadata"]

log = logging.getLogger(__name__)

# VR of the float and double pixel data elements (PS3.6); Pixel Data (7FE0,0010) is
# OW above 8 bits allocated (its bulk data is native by default), else OB.
_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD"}
_BASE = "\x00pacscore-base\x00"  # cannot occur in a URL or a DICOM value
_BASE_JSON = json.dumps(_BASE)[1:-1].encode()
_BULK_THRESHOLD = 4096  # base64 characters above which a value is given as a URI


def _dicom_json(ds: Dataset, url: str, prefix: str, problems: list[str]) -> dict[str, Any]:
    """``ds`` in DICOM JSON (PS3.18 F.2), element by element: one that cannot be
    converted goes out as received, VR UN (or is left out when nothing of it was read
    raw), and is noted in ``problems``.  Bulk data URIs are ``{url}/bulk/{path}`` with
    the paths of :func:`.dicom.values.parse_path` (``tag``, ``tag/item/tag`` ...)."""
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        key, path = f"{int(tag):08X}", f"{prefix}{int(tag):08X}"
        raw = ds.get_item(tag)  # as read (before pydicom converts it), for the fallback
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                out[key] = {"vr": "SQ", "Value": [
                    _dicom_json(item, url, f"{path}/{i}/", problems)
                    for i, item in enumerate(elem.value or ())]}
            else:
                out[key] = elem.to_json_dict(
                    lambda _, path=path: f"{url}/bulk/{path}",  # type: ignore[misc]
                    _BULK_THRESHOLD)
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot convert (it
            # raises undocumented kinds on stored values): sent as received, named
            value = raw.value if isinstance(raw, RawDataElement) else None
            if isinstance(value, bytes | bytearray):
                out[key] = {"vr": "UN", **(
                    {"BulkDataURI": f"{url}/bulk/{path}"}
                    if len(value) * 4 // 3 > _BULK_THRESHOLD else
                    {"InlineBinary": base64.b64encode(value).decode()} if value else {})}
            # Named by tag, VR and error type only: the value may be patient data.
            vr = getattr(raw, "VR", None) or "?"
            problems.append(f"({path}) {vr} value not convertible ({type(exc).__name__}); "
                            + ("sent as received, VR UN" if key in out else "left out"))
    return out


class _Lru:
    """Values (stamp, bytes) by key, the least recently used dropped beyond a byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[str, tuple[object, bytes]] = OrderedDict()

    def get(self, key: str, stamp: object) -> bytes | None:
        hit = self.items.get(key)
        if hit is None or hit[0] != stamp:
            return None
        self.items.move_to_end(key)
        return hit[1]

    def put(self, key: str, stamp: object, body: bytes) -> None:
        old = self.items.pop(key, None)
        self.bytes += len(body) - (len(old[1]) if old else 0)
        self.items[key] = (stamp, body)
        while self.bytes > self.max_bytes and len(self.items) > 1:
            self.bytes -= len(self.items.popitem(last=False)[1][1])


class SeriesMetadata:
    """DICOM JSON of series, kept current and warmed in the background.

    Two caches of ``max_bytes`` each: whole series (checked against the series' change
    stamp) and single instances (checked against the instance's storage location, which
    changes if it is deleted and stored again), so that a series that keeps growing is
    rebuilt from the instances already converted: O(n) work in all, not O(n^2)."""

    def __init__(self, archive: Archive, *, quiet: float = 2.0,
                 max_bytes: int = 128 * 1024**2):
        self.archive, self.quiet = archive, quiet
        self._series, self._instances = _Lru(max_bytes), _Lru(max_bytes)
        self._problems: dict[str, tuple[str, ...]] = {}  # by SOP Instance UID
        self._dirty: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._warm, name="metadata-warm",
                                        daemon=True)
        self._thread.start()
        archive.on_change(self._touched)

    # -- answering ---------------------------------------------------------------
    def instance(self, sop: str, rec: InstanceRecord | None = None,
                 header: bytes | None = None) -> dict[str, Any]:
        """DICOM JSON of one instance, bulk data URIs relative to the placeholder
        (``header``: its :meth:`Archive.header <pacscore.Archive.header>` when the
        caller has it).  Never fails for what the stored header holds (see the module's
        docstring); what it could not convert is kept for :meth:`problems`."""
        rec = rec or self.archive.record(sop)
        url = f"{_BASE}/studies/{rec.study_uid}/series/{rec.series_uid}/instances/{sop}"
        problems: list[str] = []
        meta: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if header is None:
                    header = self.archive.header(sop, rec)
                ds = dcmread(io.BytesIO(header), force=True)
                meta = _dicom_json(ds, url, "", problems)
            except PacsError:
                raise  # not this instance's content (deleted meanwhile, storage)
            except Exception as exc:  # noqa: BLE001 - unreadable for pydicom (it raises
                # undocumented kinds): the identifiers the index has are answered
                problems.append(f"header unreadable ({type(exc).__name__}); identifiers "
                                f"from the index only")
                meta = {"00080016": {"vr": "UI", "Value": [rec.sop_class_uid]},
                        "00080018": {"vr": "UI", "Value": [sop]},
                        "0020000D": {"vr": "UI", "Value": [rec.study_uid]},
                        "0020000E": {"vr": "UI", "Value": [rec.series_uid]}}
        pixel = self.archive.pixel_tag(sop, rec)
        if pixel is not None:  # the header stops before it: the pixels of all frames
            bits_allocated = meta.get("00280100", {}).get("Value", [None])[0]
            wide = isinstance(bits_allocated, int) and bits_allocated > 8
            vr = _PIXEL_VR.get(pixel) or ("OW" if wide else "OB")
            meta[f"{pixel:08X}"] = {"vr": vr, "BulkDataURI": f"{url}/bulk/{pixel:08X}"}
        meta["00020010"] = {"vr": "UI", "Value": [rec.stored_syntax]}
        with self._lock:
            if problems:
                log.warning("metadata of instance %s: %d element(s) not converted: %s",
                            sop, len(problems), "; ".join(problems))
                self._problems[sop] = tuple(problems)
            else:
                self._problems.pop(sop, None)
        return dict(sorted(meta.items()))

    def problems(self, sops: Sequence[str]) -> list[str]:
        """What the metadata of ``sops`` could not convert, one line per instance (for
        a ``Warning`` header); an instance counts as it was when last converted."""
        with self._lock:
            found = [(sop, self._problems.get(sop)) for sop in sops]
        return [f"instance {sop}: {'; '.join(p)}" for sop, p in found if p]

    def series(self, series_uid: str) -> bytes:
        """The series' JSON array (placeholder base), from the cache when current."""
        changed = self.archive.changed("series", series_uid)
        if changed is None:
            return b"[]"
        stamp = (changed, self.archive.patients.stamp())  # a correction changes it too
        with self._lock:
            hit = self._series.get(series_uid, stamp)
        if hit is not None:
            return hit
        sops = self.archive.instances("series", series_uid)
        recs = self.archive.records_of(sops)  # (one query, not one per instance)
        patients = self.archive.patients.stamp()
        with self._lock:  # the headers of the instances to convert: one query too
            todo = [rec for s, rec in recs.items() if self._instances.get(
                s, (rec.location, patients)) is None]
        headers = self.archive.headers(todo) if todo else {}
        body = b"[" + b",".join(self._instance_json(s, recs.get(s), headers.get(s))
                                for s in sops) + b"]"
        if (self.archive.changed("series", series_uid),  # unchanged meanwhile
                self.archive.patients.stamp()) == stamp:
            with self._lock:
                self._series.put(series_uid, stamp, body)
        return body

    def _instance_json(self, sop: str, rec: InstanceRecord | None = None,
                       header: bytes | None = None) -> bytes:
        rec = rec or self.archive.record(sop)
        stamp = (rec.location, self.archive.patients.stamp())
        with self._lock:
            hit = self._instances.get(sop, stamp)
        if hit is not None:
            return hit
        body = json.dumps(self.instance(sop, rec, header), separators=(",", ":")).encode()
        with self._lock:
            self._instances.put(sop, stamp, body)
        return body

    def study(self, study_uid: str) -> bytes:
        """The JSON array of every series of a study."""
        series = {s: None for s in self._study_series(study_uid)}
        parts = [self.series(s)[1:-1] for s in series]
        return b"[" + b",".join(p for p in parts if p) + b"]"

    def _study_series(self, study_uid: str) -> list[str]:
        return [str(m["SeriesInstanceUID"]) for m in
                self.archive.query("series", {"StudyInstanceUID": study_uid})]

    @staticmethod
    def render(body: bytes, base: str) -> bytes:
        """``body`` with the request's base URL in place of the placeholder."""
        return body.replace(_BASE_JSON, json.dumps(base)[1:-1].encode())

    # -- warming -----------------------------------------------------------------
    def _touched(self, results: Sequence[StoreResult]) -> None:
        now = time.monotonic()
        with self._lock:
            for r in results:
                self._dirty[r.series_uid] = now
        self._wake.set()

    def _warm(self) -> None:
        while not self._stop:
            self._wake.wait(timeout=self.quiet)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                ready = [s for s, t in self._dirty.items() if now - t >= self.quiet]
                for s in ready:
                    del self._dirty[s]
                waiting = bool(self._dirty)
            for series_uid in ready:
                if self._stop:
                    return
                try:
                    self.series(series_uid)
                except Exception as exc:  # catch-all on purpose: the thread must stay
                    # up; the request computes it again (and answers what fails)
                    log.warning("metadata of series %s not precomputed: %s", series_uid,
                                exc, exc_info=not isinstance(exc, PacsError))
            if waiting:
                time.sleep(min(self.quiet, 0.5))

    def close(self) -> None:
        """Stop the background thread."""
        self.archive.off_change(self._touched)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
