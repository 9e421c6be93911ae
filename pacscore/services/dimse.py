"""DIMSE front end (pynetdicom): C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE.

It only translates requests into :class:`~pacscore.Archive` calls, checks the AE
allow-list, writes the audit trail and maps errors to statuses through one table
(PS3.4 Annex B and C, PS3.7 C).  Incoming C-STORE data sets are written to a file in
the spool folder as they arrive (:mod:`.dimse_receive`; pynetdicom's
``STORE_RECV_CHUNKED_DATASET`` for the requests left to it) and stored from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ..archive import Archive
from ..dicom.syntaxes import EXPLICIT_LE, IMPLICIT_LE
from ..errors import (
    ArchiveStorageError,
    ConflictError,
    InvalidDicomError,
    NotFoundError,
    PacsError,
)
from ..index.base import LEVEL_ATTRIBUTES
from . import dimse_find, dimse_receive
from .dimse_send import NotSendable, OutgoingObject, send_from_memory, send_responses_directly
from .dimse_transport import clear_spool, nodelay, receive_into
from .dimse_transport import install as tune_pynetdicom
from .security import AeRegistry, AuditLog

__all__ = ["DimseServer", "STATUS"]

log = logging.getLogger(__name__)

# One table: (operation, error class) -> DIMSE status.  PS3.4 B.2.3, C.4.1.1.4,
# C.4.2.1.5, C.4.3.1.4; 0x0124 "Refused: Not Authorized" is PS3.7 C.5.
STATUS: dict[tuple[str, type[Exception]], int] = {
    ("store", InvalidDicomError): 0xC000,
    ("store", ConflictError): 0xA900,
    ("store", ArchiveStorageError): 0xA700,
    ("find", ValueError): 0xA900,
    ("get", NotFoundError): 0xC000,
    ("move", NotFoundError): 0xC000,
}
NOT_AUTHORIZED = 0x0124
# Failure Reason of a Storage Commitment item (PS3.4 J.3.3.1.1, PS3.7 C.4.2 codes).
_NO_SUCH_INSTANCE, _CLASS_INSTANCE_CONFLICT = 0x0112, 0x0119
UNABLE = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801

_LEVELS = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
# Q/R information models whose levels are fewer than all four (PS3.4 C.6.2).
_LEVELS_OF_MODEL = {str(model): ("STUDY", "SERIES", "IMAGE") for model in (
    StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove)}
_KEYS = frozenset(k for v in LEVEL_ATTRIBUTES.values() for k in v) | {
    "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries",
    "NumberOfSeriesRelatedInstances", "NumberOfPatientRelatedStudies",
}


_STOP_WAIT = 10.0
"""Seconds a stopping server waits for the stores running in association threads
(their data sets are in the spool, which goes once they ended)."""
_NOBODY = "PACSCORE-NOBODY"  # an allow-list entry no peer is expected to use


def _status(op: str, exc: Exception) -> int:
    for cls in type(exc).__mro__:
        code = STATUS.get((op, cls))  # type: ignore[arg-type]
        if code is not None:
            return code
    return UNABLE


def _matching_value(value: Any) -> str:
    """An identifier's value as the archive's query matches it: several values (a UID
    list, ``CT\\MR``) joined by backslashes as in the data set (PS3.4 C.2.2.2.2)."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


class _HandshakeInItsThread:
    """The TLS context as pynetdicom's server uses it (``wrap_socket`` of each accepted
    connection), but the handshake is left to the connection's own thread: its first
    read makes it.  pynetdicom wraps in the one thread that accepts connections, where a
    peer that connects and sends nothing held up every other association, forever."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context

    def wrap_socket(self, sock: Any, server_side: bool = False) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side,
                                        do_handshake_on_connect=False)


class DimseServer:
    """A pynetdicom SCP bound to one archive."""

    def __init__(self, archive: Archive, *, ae_title: str = "PACSCORE",
                 max_pdu: int = 0, max_associations: int = 16, idle_timeout: float = 60,
                 spool: Path | None = None):
        self.archive = archive
        # Incoming data sets are written here until stored (one server per archive,
        # so whatever is left from a killed one was never acknowledged).
        self.spool = spool or archive.root / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        clear_spool(self.spool)
        receive_into(self.spool)
        self.registry = AeRegistry(archive.root)
        self.audit = AuditLog(archive.root)
        self.ae_title = ae_title
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        # Earlier builds sent sub-operations from temp files here; remove any left.
        shutil.rmtree(archive.root / "dimse-out", ignore_errors=True)
        # pynetdicom pretty-prints every message and identifier for its debug log, shown
        # or not (a tenth of a C-FIND's time); our audit trail and logger say what
        # happened.
        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
        tune_pynetdicom()  # PDU reads, reactor wake-ups (see dimse_transport)
        dimse_receive.install()  # C-STORE data sets straight to the spool
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.maximum_pdu_size = max_pdu
        ae.maximum_associations = max_associations
        ae.network_timeout = idle_timeout
        ae.acse_timeout = ae.dimse_timeout = 30
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        # Storage contexts (as C-STORE SCP, and as the storage SCU of C-GET through
        # role selection) are accepted for every SOP class by the unrestricted storage
        # service above, so none is listed: pynetdicom deep-copies the supported
        # contexts for every association, ~50 ms with all storage classes listed.
        for model in (PatientRootQueryRetrieveInformationModelFind,
                      PatientRootQueryRetrieveInformationModelGet,
                      PatientRootQueryRetrieveInformationModelMove,
                      StudyRootQueryRetrieveInformationModelFind,
                      StudyRootQueryRetrieveInformationModelGet,
                      StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(model)
        # Storage Commitment Push Model (PS3.4 J): we are the SCP; the report may go
        # back on the same association or, once it is closed, on a new one.
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.add_requested_context(StorageCommitmentPushModel)
        self.ae = ae
        self.server: Any = None
        self._storing = 0  # stores running in association threads
        self._stores_done = threading.Condition()

    # -- lifecycle -------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 11112,
              ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen in background threads (TLS when ``ssl_context`` is given)."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._refresh_allow_list), (evt.EVT_CONN_OPEN, nodelay),
            (evt.EVT_CONN_OPEN, lambda event: send_responses_directly(event.assoc)),
            (evt.EVT_CONN_OPEN, lambda event: dimse_receive.enable(
                event.assoc, self._store_request, self.spool, self.ae.maximum_pdu_size)),
            (evt.EVT_CONN_CLOSE, dimse_receive.closed),
            (evt.EVT_C_ECHO, self._echo), (evt.EVT_C_STORE, self._store),
            (evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move), (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_N_ACTION, self._commitment),
        ]
        tls: Any = None if ssl_context is None else _HandshakeInItsThread(ssl_context)
        self.server = self.ae.start_server((host, port), block=False, evt_handlers=handlers,
                                           ssl_context=tls)

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
            with self._stores_done:  # their data sets are in the spool: let them end
                self._stores_done.wait_for(lambda: self._storing == 0, timeout=_STOP_WAIT)
            receive_into(None)  # the spool goes: other associations of this process
            clear_spool(self.spool)
            with contextlib.suppress(OSError):  # left in place when it holds other files
                self.spool.rmdir()

    # -- helpers ----------------------------------------------------------------
    def _refresh_allow_list(self, event: Any) -> None:
        """Reject associations from unregistered calling AEs (A-ASSOCIATE-RJ, PS3.8
        7.1.1.9 reason 3).  With nobody registered nobody gets in: no anonymous access."""
        names = [e.name for e in self.registry.list()]
        self.ae.require_calling_aet = names or [_NOBODY]

    def _peer(self, event: Any) -> tuple[str, str]:
        return self._requestor(event.assoc)

    @staticmethod
    def _requestor(assoc: Any) -> tuple[str, str]:
        requestor = assoc.requestor
        return str(requestor.ae_title).strip(), str(requestor.address)

    def _allowed(self, event: Any, right: str) -> bool:
        return self._may(event.assoc, right)

    def _may(self, assoc: Any, right: str) -> bool:
        name, host = self._requestor(assoc)
        if self.registry.allows(name, host, right):
            return True
        self.audit.record("authentication", action="E", outcome="minor", user=name,
                          host=host, interface="dimse", detail=f"{right} refused")
        return False

    def _rejected(self, event: Any) -> None:
        name, host = self._peer(event)
        self.audit.record("authentication", action="E", outcome="minor", user=name,
                          host=host, interface="dimse", detail="association rejected")

    @staticmethod
    def _query(event: Any) -> tuple[str, dict[str, str], list[str]]:
        """Level, matching keys and requested keys of a C-FIND/C-GET/C-MOVE request."""
        identifier = event.identifier
        level_name = str(identifier.get("QueryRetrieveLevel", "")).upper()
        if level_name not in _LEVELS_OF_MODEL.get(str(event.request.AffectedSOPClassUID),
                                                  _LEVELS):
            raise ValueError(f"QueryRetrieveLevel {level_name!r} is not a level of the "
                             f"requested information model (PS3.4 C.6: Study Root has "
                             f"no PATIENT level)")
        keys, requested = {}, []
        for elem in identifier:
            kw = elem.keyword
            if not kw or kw == "QueryRetrieveLevel" or kw not in _KEYS:
                continue
            requested.append(kw)
            value = _matching_value(elem.value)
            if value:
                keys[kw] = value
        return _LEVELS[level_name], keys, requested

    def _matches(self, event: Any) -> list[str]:
        """SOP Instance UIDs a C-GET/C-MOVE identifier selects."""
        level, keys, _ = self._query(event)
        uid_key = {"patient": "PatientID", "study": "StudyInstanceUID",
                   "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}[level]
        sops: list[str] = []
        for match in self.archive.query(level, keys):
            sops.extend(self.archive.instances(level, str(match[uid_key])))
        return sops

    # -- handlers ---------------------------------------------------------------
    def _echo(self, event: Any) -> int:
        return 0x0000 if self._allowed(event, "echo") else NOT_AUTHORIZED

    def _store(self, event: Any) -> int:
        """EVT_C_STORE: requests pynetdicom received (see :mod:`.dimse_receive`)."""
        path = Path(event.dataset_path)
        try:
            with dimse_receive.not_idle(event.assoc):
                return self._store_file(event.assoc, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _store_request(self, assoc: Any, request: dimse_receive.StoreRequest) -> int:
        return self._store_file(assoc, request.path)

    def _store_file(self, assoc: Any, path: Path) -> int:
        """Store the received data set ``path`` (its caller removes it)."""
        with self._stores_done:
            self._storing += 1
        try:
            return self._store_counted(assoc, path)
        finally:
            with self._stores_done:
                self._storing -= 1
                self._stores_done.notify_all()

    def _store_counted(self, assoc: Any, path: Path) -> int:
        name, host = self._requestor(assoc)
        if not self._may(assoc, "store"):
            return NOT_AUTHORIZED
        try:
            result = self.archive.store(path, source=f"C-STORE from {name}@{host}")
        except PacsError as exc:
            self.audit.record("transferred", action="C", outcome="minor", user=name,
                              host=host, interface="dimse", detail=exc.reason)
            return _status("store", exc)
        self.audit.record("transferred", action="C", outcome="success", user=name,
                          host=host, interface="dimse", objects=[result.sop_instance_uid])
        return 0x0000

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        name, host = self._peer(event)
        if not self._allowed(event, "find"):
            yield NOT_AUTHORIZED, None
            return
        try:
            level, keys, requested = self._query(event)
            matches = self.archive.query(level, keys)
        except (ValueError, PacsError) as exc:
            yield _status("find", exc), None
            return
        self.audit.record("query", action="E", outcome="success", user=name, host=host,
                          interface="dimse", detail=f"{level} level, {len(matches)} matches")
        fixed = {"QueryRetrieveLevel": event.identifier.QueryRetrieveLevel,
                 "RetrieveAETitle": self.ae_title}
        syntax = str(event.context.transfer_syntax)
        if dimse_find.supported(syntax, [*requested, *fixed]):
            # Pending responses encoded here (see dimse_find); pynetdicom sends the last.
            encoder = dimse_find.IdentifierEncoder([*requested, *fixed], syntax)
            command = dimse_find.find_response_command(
                str(event.request.AffectedSOPClassUID), int(event.request.MessageID), 0xFF00)
            for match in matches:
                if event.is_cancelled or not event.assoc.is_established:
                    yield 0xFE00, None
                    return
                dimse_find.send_response(event.assoc, int(event.context.context_id), command,
                                         encoder.encode({**match, **fixed}))
            return
        for match in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            ds = Dataset()
            for kw in requested:
                value = match.get(kw)
                setattr(ds, kw, "" if value is None else value)
            for kw, value in fixed.items():
                setattr(ds, kw, value)
            yield 0xFF00, ds

    @staticmethod
    def _negotiated_on(assoc: Any, sop_class: str) -> list[str]:
        """Transfer syntaxes accepted on ``assoc`` for ``sop_class``."""
        if assoc is None:
            return [EXPLICIT_LE]
        return [cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                if cx.abstract_syntax == sop_class]

    def _move_contexts(self, sops: list[str]) -> list[Any]:
        """C-MOVE sub-association contexts: per SOP class, the stored syntaxes alone
        (passthrough when the destination accepts one) and the uncompressed ones, within
        the 128 contexts an association may propose (uncompressed first)."""
        stored: dict[str, set[str]] = {}
        for sop in sops:
            rec = self.archive.record(sop)
            stored.setdefault(rec.sop_class_uid, set()).add(rec.stored_syntax)
        plain = [build_context(c, [EXPLICIT_LE, IMPLICIT_LE]) for c in sorted(stored)]
        extra = [build_context(c, sorted(ts - {EXPLICIT_LE, IMPLICIT_LE}))
                 for c, ts in sorted(stored.items()) if ts - {EXPLICIT_LE, IMPLICIT_LE}]
        return (plain + extra)[:128]

    def _dataset(self, sop: str, assoc: Any) -> Dataset:
        """The instance in the best syntax the peer accepted on ``assoc`` (stored:
        passthrough), sent as it is from memory (:mod:`.dimse_send`)."""
        rec = self.archive.record(sop)
        accepted = self._negotiated_on(assoc, rec.sop_class_uid)
        choice, ts = next(((c, t) for c, t in (
            ("stored", rec.stored_syntax), ("original", rec.original_syntax),
            (EXPLICIT_LE, EXPLICIT_LE), (IMPLICIT_LE, IMPLICIT_LE))
            if t in accepted or not accepted), (accepted[0], accepted[0]))
        return OutgoingObject(self.archive.get(sop, choice), rec.sop_class_uid, sop, ts)

    def _sub_operations(self, event: Any, sops: list[str], name: str,
                        dataset: Callable[[str], Dataset]) -> Iterator[Any]:
        """Pending C-GET/C-MOVE responses, one per instance; stops when cancelled.  An
        instance that cannot be sent fails its own sub-operation only."""
        for sop in sops:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            try:
                ds = dataset(sop)
            except Exception as exc:  # a codec library may raise its own types
                reason = exc.reason if isinstance(exc, PacsError) else \
                    f"{type(exc).__name__}: {exc}"
                log.warning("%s of %s failed: %s", name, sop, reason)
                ds = NotSendable(sop, reason)
            yield 0xFF00, ds

    def _get(self, event: Any) -> Iterator[Any]:
        name, host = self._peer(event)
        if not self._allowed(event, "get"):
            yield NOT_AUTHORIZED, None
            return
        try:
            sops = self._matches(event)
        except (ValueError, PacsError) as exc:
            yield _status("get", exc), None
            return
        yield len(sops)
        send_from_memory(event.assoc)
        yield from self._sub_operations(event, sops, "C-GET",
                                        lambda sop: self._dataset(sop, event.assoc))
        self.audit.record("transferred", action="R", outcome="success", user=name, host=host,
                          interface="dimse", objects=sops)

    def _commitment(self, event: Any) -> tuple[int, Dataset | None]:
        """N-ACTION of Storage Commitment: check every referenced instance (it must be
        stored, which makes it durable, as the SOP class named), answer, then send the
        N-EVENT-REPORT."""
        name, host = self._peer(event)
        if not self._allowed(event, "store"):
            return NOT_AUTHORIZED, None
        request = event.action_information
        if event.action_type != 1 or "TransactionUID" not in request:
            return 0x0115, None  # invalid argument value (PS3.7 C.4.2)
        committed, failed = [], []
        for item in request.get("ReferencedSOPSequence", []):
            ref = Dataset()
            ref.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            ref.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            try:
                rec = self.archive.record(str(item.ReferencedSOPInstanceUID))
                reason = None if rec.sop_class_uid == str(item.ReferencedSOPClassUID) \
                    else _CLASS_INSTANCE_CONFLICT
            except PacsError:
                reason = _NO_SUCH_INSTANCE
            if reason is None:
                committed.append(ref)
            else:
                ref.FailureReason = reason
                failed.append(ref)
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        if committed:
            report.ReferencedSOPSequence = committed
        if failed:
            report.FailedSOPSequence = failed
        self.audit.record("transferred", action="E", outcome="success" if not failed
                          else "minor", user=name, host=host, interface="dimse",
                          objects=[str(r.ReferencedSOPInstanceUID) for r in committed],
                          detail=f"storage commitment: {len(failed)} failed")
        threading.Thread(target=self._send_report, args=(event.assoc, name, report,
                                                          2 if failed else 1),
                         daemon=True).start()
        return 0x0000, None

    def _send_report(self, assoc: Any, requestor: str, report: Dataset, event_type: int) -> None:
        time.sleep(0.05)  # let the N-ACTION response go out first
        instance = "1.2.840.10008.1.20.1.1"  # well-known Storage Commitment instance
        if assoc.is_established:
            assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel, instance)
            return
        entry = self.registry.get(requestor)
        if entry is None or entry.port is None:
            log.warning("storage commitment report for %s undeliverable: no port", requestor)
            return
        # On an association of its own the report goes from the SCP role, which is
        # proposed (PS3.4 J.3.3.1.3, Note).
        peer = self.ae.associate(entry.host, entry.port, ae_title=entry.name,
                                 ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
                                 evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        if peer.is_established:
            peer.send_n_event_report(report, event_type, StorageCommitmentPushModel, instance)
            peer.release()

    @staticmethod
    def _sub_accepted(event: Any, sub: list[Any]) -> None:
        """The C-MOVE sub-association is up: remember it, send objects as they are."""
        sub.append(event.assoc)
        send_from_memory(event.assoc)

    def _move(self, event: Any) -> Iterator[Any]:
        name, host = self._peer(event)
        if not self._allowed(event, "move"):
            yield None, None
            return
        destination = self.registry.get(str(event.move_destination.decode()
                                            if isinstance(event.move_destination, bytes)
                                            else event.move_destination).strip())
        if destination is None or destination.port is None:
            self.audit.record("security", action="E", outcome="minor", user=name, host=host,
                              interface="dimse", detail="C-MOVE to an unregistered AE")
            yield None, None
            return
        try:
            sops = self._matches(event)
        except (ValueError, PacsError):
            yield destination.host, destination.port
            yield UNABLE, None
            return
        sub: list[Any] = []  # the sub-association, once the destination accepted it
        yield destination.host, destination.port, {
            "contexts": self._move_contexts(sops), "ae_title": destination.name,
            "evt_handlers": [(evt.EVT_CONN_OPEN, nodelay),
                             (evt.EVT_ACCEPTED, lambda e: self._sub_accepted(e, sub))]}
        yield len(sops)
        yield from self._sub_operations(event, sops, "C-MOVE", lambda sop: self._dataset(
            sop, sub[0] if sub else None))
        self.audit.record("transferred", action="R", outcome="success", user=name, host=host,
                          interface="dimse", objects=sops, detail=f"to {destination.name}")
