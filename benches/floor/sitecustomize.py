"""The *floor* front end of ``benches/test_front_ends.py``: what any design that keeps
frames on S3 and records in PostgreSQL must pay per C-STORE, on this machine.

Python imports this module at start-up when its folder is on ``PYTHONPATH`` (the bench
sets it for one ``pacscore serve`` and its worker processes, with ``FLOOR_S3`` =
``bucket|prefix|endpoint`` and ``FLOOR_DSN``).  That server is an embedded one with its
local durability off (no fsync: the local files only stand in for memory) and two
requests added on each instance's path to its answer:

- **one S3 PUT** of the instance's codestreams, concatenated (conditional create),
  started when they are staged and waited for before the instance is handed over or
  committed, as the scaled store does (the verification runs meanwhile);
- **one PostgreSQL transaction** per index commit: a row per instance (UID, record,
  header), synchronous commit (the server's default).

No marker, no array metadata object, no second query: a lower bound that no real
design reaches (the page-cache writes it keeps are its only extra work).  It patches
internals on purpose: when they change, the bench fails rather than measure something
else.
"""

from __future__ import annotations

import os

if os.environ.get("FLOOR_S3"):  # (only the bench's floor server sets it)
    import concurrent.futures
    import dataclasses
    import threading
    from collections.abc import Sequence
    from typing import Any

    import obstore
    import psycopg

    from pacscore import archive as _archive
    from pacscore.config import ArchiveConfig
    from pacscore.index.lmdb_index import LmdbIndex
    from pacscore.store.object_store import ObjectFrameStore
    from pacscore.store.zarr_store import ZarrFrameStore

    _BUCKET, _PREFIX, _ENDPOINT = os.environ["FLOOR_S3"].split("|")
    _lock = threading.Lock()
    _state: dict[str, Any] = {}
    _puts: dict[str, concurrent.futures.Future[Any]] = {}

    def _s3() -> tuple[Any, concurrent.futures.ThreadPoolExecutor]:
        with _lock:
            if "s3" not in _state:
                _state["s3"] = ObjectFrameStore(_BUCKET, _PREFIX, _ENDPOINT,
                                                allow_http=True).store
                _state["pool"] = concurrent.futures.ThreadPoolExecutor(4)
            return _state["s3"], _state["pool"]

    def _wait(locs: Sequence[str]) -> None:
        for loc in locs:
            if (put := _puts.pop(loc, None)) is not None:
                put.result()

    _init, _stage, _flush, _put = (_archive.Archive.__init__, ZarrFrameStore.stage_frames,
                                   ZarrFrameStore.flush, LmdbIndex.put)

    def _no_fsync(self: Any, root: Any, config: Any = None, *args: Any, **kw: Any) -> None:
        _init(self, root, dataclasses.replace(config or ArchiveConfig(), fsync=False),
              *args, **kw)

    def _stage_and_put(self: Any, loc: str, layout: Any, syntax: str,
                       frames: Sequence[bytes]) -> int:
        written: int = _stage(self, loc, layout, syntax, frames)
        store, pool = _s3()
        _puts[loc] = pool.submit(obstore.put, store, f"floor/{loc}",
                                 b"".join(bytes(f) for f in frames), mode="create",
                                 use_multipart=False)
        return written

    def _flush_after_put(self: Any, locs: Sequence[str]) -> None:
        _wait(locs)
        _flush(self, locs)

    def _put_and_insert(self: Any, items: Sequence[tuple[Any, bytes]]) -> Any:
        outcomes = _put(self, items)
        with _lock:
            if "pg" not in _state:
                _state["pg"] = conn = psycopg.connect(os.environ["FLOOR_DSN"])
                conn.execute("CREATE TABLE IF NOT EXISTS floor "
                             "(uid text PRIMARY KEY, record bytea, header bytea)")
                conn.commit()
            conn = _state["pg"]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO floor VALUES (%s, %s, %s)",
                                [(rec.sop_instance_uid, repr(rec).encode(), bytes(header))
                                 for rec, header in items])
            conn.commit()
        return outcomes

    def _after_put(name: str) -> Any:
        orig = getattr(ZarrFrameStore, name)

        def wait_then(self: Any, loc: str) -> None:
            _wait([loc])
            orig(self, loc)
        return wait_then

    for _name in ("handoff", "make_durable"):
        setattr(ZarrFrameStore, _name, _after_put(_name))
    _archive.Archive.__init__ = _no_fsync  # type: ignore[method-assign]
    ZarrFrameStore.stage_frames = _stage_and_put  # type: ignore[method-assign]
    ZarrFrameStore.flush = _flush_after_put  # type: ignore[method-assign]
    LmdbIndex.put = _put_and_insert  # type: ignore[method-assign]
