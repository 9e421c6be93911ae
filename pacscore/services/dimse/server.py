"""DIMSE front end (pynetdicom): C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE, and MPPS
N-CREATE/N-SET (:mod:`.mpps`).

It only translates requests into :class:`~pacscore.Archive` calls, checks the AE
allow-list, writes the audit trail (one line per request, its outcome that of the
status the peer was told) and maps errors to statuses and Error Comments through one
table each (PS3.4 Annex B and C, PS3.7 C).  Incoming C-STORE data sets are written to
a file in the spool folder as they arrive (:mod:`._fast.receive`; pynetdicom's
``STORE_RECV_CHUNKED_DATASET`` for the requests left to it) and handed to the archive
as that open file (never by name).  Connections and association slots are counted by
:mod:`._fast.accept`; C-GET, C-MOVE and Storage Commitment are in
:mod:`.retrieve`.  Without the fast paths (:mod:`._fast.patches`: a pynetdicom
whose internals changed) the same handlers run on pynetdicom's own code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import ssl
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ...archive import Archive
from ...dicom.header import validate_uid
from ...dicom.identity import claimed_uids
from ...errors import (
    ArchiveStorageError,
    ConflictError,
    DuplicateInstanceError,
    IdentityMismatchError,
    IndexUnavailableError,
    InvalidAttributeValueError,
    InvalidDicomError,
    InvalidRequestError,
    InvalidUIDError,
    LimitExceededError,
    MissingAttributeError,
    MissingAttributeValueError,
    NotFoundError,
    ObjectStorageError,
    PacsError,
    ProcedureStepError,
)
from ...index.base import LEVEL_ATTRIBUTES
from ..auth.security import AeRegistry, AuditLog, outcome_of
from ._fast import accept as dimse_accept
from ._fast import find as dimse_find
from ._fast import patches as dimse_patches
from ._fast import receive as dimse_receive
from ._fast import scope as dimse_scope
from ._fast.receive import StoreAnswer, StoreRequest
from ._fast.send import send_responses_directly
from ._fast.transport import clear_spool, nodelay, private_folder
from ._fast.wire import ERROR_COMMENT_LENGTH, error_comment
from .mpps import ProcedureStepHandlers
from .retrieve import NOT_AUTHORIZED, UNABLE, RetrieveHandlers, status_set
from .worklist import MODALITY_WORKLIST_FIND, WorklistHandlers

__all__ = ["STATUS", "DimseServer"]

log = logging.getLogger(__name__)

# One table: (operation, error class) -> DIMSE status.  PS3.4 B.2.3, C.4.1.1.4,
# C.4.2.1.5, C.4.3.1.4; 0x0124 "Refused: Not Authorized" is PS3.7 C.5.
STATUS: dict[tuple[str, type[Exception]], int] = {
    ("store", InvalidDicomError): 0xC000,
    ("store", IdentityMismatchError): 0xA900,  # PS3.4 B.2.3: does not match
    ("store", ConflictError): 0xA900,
    ("store", ArchiveStorageError): 0xA700,
    # A malformed identifier: "Identifier does not match SOP Class" (C.4.1.1.4,
    # C.4.2.1.5, C.4.3.1.4).  Only the error tree: a bare ValueError is a bug, 0xC000.
    ("find", InvalidRequestError): 0xA900,
    ("get", InvalidRequestError): 0xA900,
    ("move", InvalidRequestError): 0xA900,
    # Modality Worklist (PS3.4 K.4.1.1.4, Table K.4-1): a key of another VR or a value
    # its VR cannot hold; more matches than the server answers (worklist_max_answers).
    ("worklist", InvalidRequestError): 0xA900,
    ("worklist", LimitExceededError): 0xA700,
    ("get", NotFoundError): 0xC000,
    ("move", NotFoundError): 0xC000,
    # Modality Performed Procedure Step N-CREATE/N-SET (PS3.4 F.7.2, PS3.7 10.1.3-5 and
    # C): the nearest class counts; anything else 0x0110 Processing failure (.mpps).
    ("mpps", ProcedureStepError): 0x0110,  # incl. a final step: Error ID A710
    ("mpps", MissingAttributeError): 0x0120,
    ("mpps", MissingAttributeValueError): 0x0121,
    ("mpps", InvalidAttributeValueError): 0x0106,
    ("mpps", DuplicateInstanceError): 0x0111,
    ("mpps", NotFoundError): 0x0112,  # No such SOP Instance
    ("mpps", InvalidUIDError): 0x0117,  # Invalid object instance
    ("mpps", InvalidRequestError): 0x0106,  # an attribute of the wrong VR
    ("mpps", ArchiveStorageError): 0x0213,  # Resource limitation
}
# Error Comment (0000,0902) of a refused C-STORE by error class (PS3.7 C.4.2): a fixed
# text where the reason would name the server's files, else the reason itself.
_COMMENTS: dict[type[Exception], str | None] = {
    ConflictError: "SOP Instance UID already stored with other content",
    ArchiveStorageError: "archive out of resources: send it again later",
    IndexUnavailableError: "archive index unreachable: send it again later",
    ObjectStorageError: "archive object storage failed: send it again later",
    PacsError: None,  # the reason, cut to 64 characters
}
_OUT_OF_RESOURCES = 0xA700

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
# The request's UIDs, (0000,0002) and (0000,1000), and the data set's (PS3.4 C.4.2.1.4.2).
_AFFECTED = ((0x00000002, "Affected SOP Class UID"), (0x00001000, "Affected SOP Instance UID"))
_DATA_SET = ((0x00080016, "SOP Class UID"), (0x00080018, "SOP Instance UID"))


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


def _invalid_uids(sop_class: str, sop: str) -> StoreAnswer | None:
    """0xC000 naming the first of the request's UIDs that is not a UID at all (what the
    archive refuses in a data set too), or None."""
    for (tag, name), value in zip(_AFFECTED, (sop_class, sop), strict=True):
        try:
            validate_uid(value, name)
        except InvalidDicomError:
            return StoreAnswer(UNABLE, f"invalid {name}", (tag,))
    return None


def _mismatch(status: int, spooled: BinaryIO, announced: tuple[str, str]
              ) -> tuple[StoreAnswer, str]:
    """The answer to a data set that is not the one its request names (PS3.4
    C.4.2.1.4.2): the Offending Element and, in the Error Comment, the data set's own
    UID (the response's Affected SOP Instance UID names the request's); and the audit
    detail naming both."""
    found = claimed_uids(spooled)  # read again: only for a request refused for naming others
    i = 1 if found[1] != announced[1] or found[0] == announced[0] else 0
    (tag, name), value = _DATA_SET[i], found[i]
    comment = next((c for c in (f"data set {name} {value}", f"data set has {value}", value)
                    if len(c) <= ERROR_COMMENT_LENGTH), "")
    detail = (f"the request's {_AFFECTED[i][1]} is {announced[i]}, the data set's {name} "
              f"{value or '(unreadable)'}: refused")
    return StoreAnswer(status, comment, (tag,)), detail


def _as_pynetdicom(answer: StoreAnswer) -> int | Dataset:
    """What an ``EVT_C_STORE`` handler returns for ``answer``."""
    if not answer.comment and not answer.offending:
        return answer.status
    ds = Dataset()
    ds.Status = answer.status
    if answer.comment:
        ds.ErrorComment = error_comment(answer.comment)
    if answer.offending:
        ds.OffendingElement = list(answer.offending)
    return ds


@contextlib.contextmanager
def _spooled(path: Path) -> Iterator[BinaryIO]:
    """The data set pynetdicom spooled at ``path``, opened once, without following a
    link, and checked to be a file of this user (the spool is private anyway)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as spooled:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionError(f"{path} is not a spool file of this user")
        yield spooled


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


class DimseServer(RetrieveHandlers, WorklistHandlers, ProcedureStepHandlers):
    """A pynetdicom SCP bound to one archive.

    ``patched`` and ``used`` are the pynetdicom names the fast paths need
    (:mod:`._fast.patches`); when one is missing the server runs on pynetdicom's own
    code (``fast`` False).
    """

    def __init__(self, archive: Archive, *, ae_title: str = "PACSCORE",
                 max_pdu: int = 0, max_associations: int = 16,
                 max_connections_per_host: int = 8, association_request_timeout: float = 5.0,
                 idle_timeout: float = 60, spool: Path | None = None,
                 worklist_max_answers: int = 5000,
                 patched: Sequence[tuple[str, tuple[str, ...] | None]] = dimse_patches.PATCHED,
                 used: Sequence[str] = dimse_patches.USED):
        self.archive = archive
        # Incoming data sets are written here until stored (one server per archive,
        # so whatever is left from a killed one was never acknowledged).  A folder
        # of this user that nobody else may write to (PermissionError otherwise).
        self.spool = spool or archive.root / "spool"
        private_folder(self.spool)
        clear_spool(self.spool)
        self._spooling = True
        self.registry = AeRegistry(archive.root)
        self.audit = AuditLog(archive.root)
        self.ae_title = ae_title
        self.worklist_max_answers = worklist_max_answers
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        # Earlier builds sent sub-operations from temp files here; remove any left.
        shutil.rmtree(archive.root / "dimse-out", ignore_errors=True)
        # pynetdicom pretty-prints every message and identifier for its debug log, shown
        # or not (a tenth of a C-FIND's time); our audit trail and logger say what
        # happened.
        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
        # PDU reads, reactor wake-ups, C-STORE data sets straight to the spool, poll
        # instead of select (see dimse_transport, dimse_receive)
        self.fast = dimse_patches.install(patched, used)
        self.limits = dimse_accept.AcceptLimits(
            max_associations=max_associations, per_host=max_connections_per_host,
            request_timeout=association_request_timeout, acse_timeout=30)
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
        ae.add_supported_context(ModalityWorklistInformationFind)  # PS3.4 K.6 (.worklist)
        ae.add_supported_context(ModalityPerformedProcedureStep)  # PS3.4 F.7 (.mpps)
        # Storage Commitment Push Model (PS3.4 J): we are the SCP; the report may go
        # back on the same association or, once it is closed, on a new one.
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.add_requested_context(StorageCommitmentPushModel)
        self.ae = ae
        if self.fast:  # this AE's associations take the fast paths, no other one
            dimse_scope.claim(ae, self.spool)
        self.server: Any = None
        self._storing = 0  # stores running in association threads
        self._stores_done = threading.Condition()

    # -- lifecycle -------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 11112,
              ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen in background threads (TLS when ``ssl_context`` is given)."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._refresh_allow_list), (evt.EVT_CONN_OPEN, nodelay),
            (evt.EVT_C_ECHO, self._echo), (evt.EVT_C_STORE, self._store),
            (evt.EVT_C_FIND, self._c_find), (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move), (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_N_ACTION, self._commitment),
            (evt.EVT_N_CREATE, self._n_create), (evt.EVT_N_SET, self._n_set),
        ]
        tls: Any = None if ssl_context is None else _HandshakeInItsThread(ssl_context)
        if not self.fast:
            self.server = self.ae.start_server((host, port), block=False,
                                               evt_handlers=handlers, ssl_context=tls)
            return
        handlers += [
            (evt.EVT_CONN_OPEN, lambda event: send_responses_directly(event.assoc)),
            (evt.EVT_CONN_OPEN, lambda event: dimse_receive.enable(
                event.assoc, self._store_request, self.spool, self.ae.maximum_pdu_size)),
            (evt.EVT_CONN_CLOSE, dimse_receive.closed)]
        self.server = dimse_accept.start(self.ae, (host, port), handlers, tls, self.limits,
                                         self._over_the_limit)

    def stop(self) -> None:
        """Stop accepting and close the listening socket; remove the spool's files and,
        when it is empty then, the spool folder (idempotent)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
            with self._stores_done:  # their data sets are in the spool: let them end
                self._stores_done.wait_for(lambda: self._storing == 0, timeout=_STOP_WAIT)
        if self._spooling:
            self._spooling = False
            if self.fast:
                dimse_scope.release(self.ae)  # the spool goes
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

    def _over_the_limit(self, assoc: Any, why: str) -> None:
        name, host = self._requestor(assoc)
        self.audit.record("security", action="E", outcome="minor", user=name, host=host,
                          interface="dimse", detail=f"association request: {why}")

    def _failure(self, op: str, exc: Exception) -> tuple[int, str]:
        """The status and Error Comment of a C-FIND/C-GET/C-MOVE that ``exc`` ended:
        an error of the tree by :data:`STATUS` with its reason; anything else (a bug,
        a library's bare ValueError) 0xC000 "unable to process", logged with its
        traceback, its text kept from the peer."""
        if isinstance(exc, PacsError):
            return _status(op, exc), exc.reason
        log.exception("C-%s failed", op.upper())
        return UNABLE, f"internal error ({type(exc).__name__}), logged"

    def _mpps_status(self, exc: Exception) -> int:
        """The N-CREATE/N-SET status of ``exc`` (:data:`STATUS` rows ``mpps``)."""
        for cls in type(exc).__mro__:
            code = STATUS.get(("mpps", cls))  # type: ignore[arg-type]
            if code is not None:
                return code
        return 0x0110

    @staticmethod
    def _query(event: Any) -> tuple[str, dict[str, str], list[str]]:
        """Level, matching keys and requested keys of a C-FIND/C-GET/C-MOVE request."""
        identifier = event.identifier
        level_name = str(identifier.get("QueryRetrieveLevel", "")).upper()
        if level_name not in _LEVELS_OF_MODEL.get(str(event.request.AffectedSOPClassUID),
                                                  _LEVELS):
            raise InvalidRequestError(f"QueryRetrieveLevel {level_name!r} is not a level of "
                                      f"the requested information model (PS3.4 C.6: "
                                      f"Study Root has no PATIENT level)")
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

    def _store(self, event: Any) -> int | Dataset:
        """EVT_C_STORE: requests pynetdicom received (see :mod:`._fast.receive`)."""
        path = Path(event.dataset_path)
        request = event.request
        uids = str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or "")
        try:
            refusal = _invalid_uids(*uids)
            if refusal is not None:
                return _as_pynetdicom(self._refuse(event.assoc, refusal, uids[1]))
            with dimse_receive.not_idle(event.assoc), _spooled(path) as spooled:
                return _as_pynetdicom(self._store_file(event.assoc, spooled, uids))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _store_request(self, assoc: Any, request: StoreRequest,
                       spooled: BinaryIO | None) -> StoreAnswer:
        """The fast path's handler (:data:`._fast.receive.StoreHandler`)."""
        if spooled is None or request.refusal is not None:
            return self._refuse(assoc, request.refusal or StoreAnswer(_OUT_OF_RESOURCES),
                                request.sop_instance_uid)
        return self._store_file(assoc, spooled,
                                (request.sop_class_uid, request.sop_instance_uid))

    def _refuse(self, assoc: Any, answer: StoreAnswer, sop: str) -> StoreAnswer:
        """A request refused as it is: audited, answered ``answer``."""
        name, host = self._requestor(assoc)
        self.audit.record("transferred", action="C", outcome=outcome_of(answer.status),
                          user=name, host=host, interface="dimse", failed=[sop] if sop else None,
                          detail=f"C-STORE 0x{answer.status:04X}: {answer.comment}")
        return answer

    def _store_file(self, assoc: Any, spooled: BinaryIO, announced: tuple[str, str]
                    ) -> StoreAnswer:
        """Store the received data set ``spooled`` (its caller removes it), announced as
        ``(SOP Class UID, SOP Instance UID)`` by its request."""
        with self._stores_done:
            self._storing += 1
        try:
            return self._store_counted(assoc, spooled, announced)
        finally:
            with self._stores_done:
                self._storing -= 1
                self._stores_done.notify_all()

    def _store_counted(self, assoc: Any, spooled: BinaryIO, announced: tuple[str, str]
                       ) -> StoreAnswer:
        name, host = self._requestor(assoc)
        if not self._may(assoc, "store"):
            return StoreAnswer(NOT_AUTHORIZED, f"{name} may not store here"[:64])
        try:
            result = self.archive.store(spooled, source=f"C-STORE from {name}@{host}",
                                        strict_identity=True)
        except PacsError as exc:
            answer, detail = self._refusal(exc, spooled, announced)
            if isinstance(exc, ArchiveStorageError):  # the operator's to fix: say what
                log.warning("C-STORE from %s refused 0x%04X: %s", name, answer.status,
                            exc.reason)
            self.audit.record("transferred", action="C", outcome=outcome_of(answer.status),
                              user=name, host=host, interface="dimse", failed=[announced[1]],
                              detail=f"C-STORE 0x{answer.status:04X}: {detail}")
            return answer
        self.audit.record("transferred", action="C", outcome="success", user=name,
                          host=host, interface="dimse", objects=[result.sop_instance_uid])
        return StoreAnswer(0x0000)

    @staticmethod
    def _refusal(exc: PacsError, spooled: BinaryIO, announced: tuple[str, str]
                 ) -> tuple[StoreAnswer, str]:
        """The answer to a store the archive refused, and the audit detail."""
        status = _status("store", exc)
        if isinstance(exc, IdentityMismatchError):
            return _mismatch(status, spooled, announced)
        comment = next((c for cls in type(exc).__mro__ if cls in _COMMENTS
                        for c in [_COMMENTS[cls]]), None)
        return StoreAnswer(status, comment or exc.reason), exc.reason

    def _c_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND: the handler of the request's information model."""
        by_model = {MODALITY_WORKLIST_FIND: self._worklist_find}
        return by_model.get(str(event.request.AffectedSOPClassUID), self._find)(event)

    def _find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        name, host = self._peer(event)
        if not self._allowed(event, "find"):
            yield NOT_AUTHORIZED, None
            return
        try:
            level, keys, requested = self._query(event)
            matches = self.archive.query(level, keys)
        except Exception as exc:  # noqa: BLE001 - the request's boundary: answered and
            # audited whatever ended it (a bug: 0xC000, logged with its traceback)
            status, comment = self._failure("find", exc)
            self.audit.record("query", action="E", outcome=outcome_of(status), user=name,
                              host=host, interface="dimse",
                              detail=f"final status 0x{status:04X}: {comment}")
            yield status_set(status, comment), None
            return
        self.audit.record("query", action="E", outcome="success", user=name, host=host,
                          interface="dimse", detail=f"{level} level, {len(matches)} matches")
        fixed = {"QueryRetrieveLevel": event.identifier.QueryRetrieveLevel,
                 "RetrieveAETitle": self.ae_title}
        syntax = str(event.context.transfer_syntax)
        if self.fast and dimse_find.supported(syntax, [*requested, *fixed]):
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
