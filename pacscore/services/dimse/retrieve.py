"""C-GET, C-MOVE and Storage Commitment handlers of :class:`~.dimse.DimseServer`.

Each retrieve writes one audit line when it ends, whatever ends it (its last
sub-operation, a cancel, a destination that cannot be reached, an association that
went away), with the outcome of the final status the peer is told (:func:`outcome_of`)
and the SOP Instance UIDs sent and failed (PS3.15 A.5.3.2, DICOM Instances
Transferred).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from ...archive import Archive
from ...dicom.syntaxes import EXPLICIT_LE, IMPLICIT_LE
from ...errors import PacsError
from ..auth.security import AeRegistry, AuditLog, outcome_of
from ._fast.send import NotSendable, OutgoingObject, SubOperations, send_from_memory, track
from ._fast.transport import nodelay
from ._fast.wire import error_comment

__all__ = ["NOT_AUTHORIZED", "UNABLE", "RetrieveHandlers", "status_set"]

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x0124  # "Refused: Not Authorized", PS3.7 C.5
UNABLE = 0xC000
_PENDING, _CANCELLED = 0xFF00, 0xFE00
_DESTINATION_UNREACHABLE = 0xA801  # PS3.4 C.4.2.1.5: what pynetdicom answers then
# Failure Reason of a Storage Commitment item (PS3.4 J.3.3.1.1, PS3.7 C.4.2 codes).
_NO_SUCH_INSTANCE, _CLASS_INSTANCE_CONFLICT = 0x0112, 0x0119


def status_set(status: int, comment: str) -> Dataset:
    """A final response's status with an Error Comment (0000,0902; PS3.7 C.4.1.1.4),
    as pynetdicom takes it from a handler."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = error_comment(comment)
    return ds


class RetrieveHandlers:
    """The retrieve side of the DIMSE server (a mixin: the attributes below are the
    server's)."""

    archive: Archive
    audit: AuditLog
    registry: AeRegistry
    ae: AE
    fast: bool
    """pacscore's fast paths are installed (:mod:`._fast.patches`): sub-operations
    are sent from memory as stored, else pynetdicom encodes a pydicom data set."""

    def _peer(self, event: Any) -> tuple[str, str]:
        raise NotImplementedError

    def _allowed(self, event: Any, right: str) -> bool:
        raise NotImplementedError

    def _matches(self, event: Any) -> list[str]:
        raise NotImplementedError

    def _failure(self, op: str, exc: Exception) -> tuple[int, str]:
        raise NotImplementedError

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
        passthrough), sent as it is from memory (:mod:`._fast.send`); without the fast
        paths, as a pydicom data set for pynetdicom to encode."""
        rec = self.archive.record(sop)
        accepted = self._negotiated_on(assoc, rec.sop_class_uid)
        choice, ts = next(((c, t) for c, t in (
            # the original syntax by its UID: the object as received but for the
            # patient corrections in force (``original`` would be without them)
            ("stored", rec.stored_syntax), (rec.original_syntax, rec.original_syntax),
            (EXPLICIT_LE, EXPLICIT_LE), (IMPLICIT_LE, IMPLICIT_LE))
            if t in accepted or not accepted), (accepted[0], accepted[0]))
        part10 = self.archive.get(sop, choice)
        if self.fast:
            return OutgoingObject(part10, rec.sop_class_uid, sop, ts)
        return pydicom.dcmread(io.BytesIO(part10))

    def _sub_operations(self, event: Any, sops: list[str], what: str, destination: str,
                        dataset: Callable[[str], Dataset], tally: SubOperations
                        ) -> Iterator[Any]:
        """The number of sub-operations, then a pending C-GET/C-MOVE response per
        instance; stops when cancelled.  An instance that cannot be sent fails its own
        sub-operation only.  The audit line is written however this ends."""
        name, host = self._peer(event)
        ended = cancelled = False
        try:
            yield len(sops)
            for sop in sops:
                if event.is_cancelled:
                    cancelled = True
                    yield _CANCELLED, None
                    return
                try:
                    ds = dataset(sop)
                except PacsError as exc:  # codec errors arrive as such (retrieve.py)
                    log.warning("%s of %s failed: %s", what, sop, exc.reason)
                    ds = NotSendable(sop, exc.reason)
                except Exception as exc:  # catch-all on purpose: a sub-operation's boundary: a
                    # bug fails this instance alone (PS3.4 C.4.3.3.1), with its traceback
                    log.exception("%s of %s failed", what, sop)
                    ds = NotSendable(sop, f"internal error ({type(exc).__name__}), logged")
                yield _PENDING, ds
            ended = True
        finally:
            self._audit_retrieve(name, host, what, destination, sops, tally,
                                 ended=ended or not sops, cancelled=cancelled)

    def _audit_retrieve(self, name: str, host: str, what: str, destination: str,
                        sops: list[str], tally: SubOperations, *, ended: bool,
                        cancelled: bool) -> None:
        """One audit line: the final status the peer is told (as pynetdicom decides it
        from the sub-operations), the objects sent, and those failed or never sent."""
        done = set(tally.completed) | set(tally.warned) | set(tally.failed)
        unsent = [s for s in sops if s not in done]
        if cancelled:
            status = _CANCELLED
        elif ended:
            status = tally.final_status()
        else:  # pynetdicom stopped asking: destination unreachable, association gone
            status = _DESTINATION_UNREACHABLE if what == "C-MOVE" and not done else 0xA702
        sent = tally.completed + tally.warned
        self.audit.record(
            "transferred", action="R", outcome=outcome_of(status), user=name, host=host,
            interface="dimse", objects=sent, failed=tally.failed + unsent,
            detail=f"{what}{f' to {destination}' if destination else ''}: final status "
                   f"0x{status:04X}, {len(sent)} sent, {len(tally.failed)} failed"
                   f"{f', {len(unsent)} not sent' if unsent else ''}")

    def _refused(self, event: Any, what: str, status: int, why: str) -> None:
        name, host = self._peer(event)
        self.audit.record("transferred", action="R", outcome=outcome_of(status), user=name,
                          host=host, interface="dimse",
                          detail=f"{what}: final status 0x{status:04X}, {why}")

    def _get(self, event: Any) -> Iterator[Any]:
        if not self._allowed(event, "get"):
            yield NOT_AUTHORIZED, None
            return
        try:
            sops = self._matches(event)
        except Exception as exc:  # noqa: BLE001 - the request's boundary (see _failure)
            status, comment = self._failure("get", exc)
            self._refused(event, "C-GET", status, comment)
            # pynetdicom takes a count before any status (a status there is answered
            # 0xC413 without its comment): one sub-operation, refused at once.
            yield 1
            yield status_set(status, comment), None
            return
        tally = SubOperations(total=len(sops))
        if self.fast:
            send_from_memory(event.assoc)
        track(event.assoc, tally)
        yield from self._sub_operations(event, sops, "C-GET", "", lambda sop: self._dataset(
            sop, event.assoc), tally)

    def _sub_accepted(self, event: Any, sub: list[Any], tally: SubOperations) -> None:
        """The C-MOVE sub-association is up: remember it, send objects as they are."""
        sub.append(event.assoc)
        if self.fast:
            send_from_memory(event.assoc)
        track(event.assoc, tally)

    def _move(self, event: Any) -> Iterator[Any]:
        name, host = self._peer(event)
        if not self._allowed(event, "move"):
            yield None, None
            return
        destination = self.registry.get(str(event.move_destination.decode()
                                            if isinstance(event.move_destination, bytes)
                                            else event.move_destination).strip())
        if destination is None or destination.port is None:
            self.audit.record("security", action="E", outcome="serious", user=name, host=host,
                              interface="dimse", detail="C-MOVE to an unregistered AE: final "
                              f"status 0x{_DESTINATION_UNREACHABLE:04X}")
            yield None, None
            return
        try:
            sops = self._matches(event)
        except Exception as exc:  # noqa: BLE001 - the request's boundary (see _failure)
            status, comment = self._failure("move", exc)
            self._refused(event, "C-MOVE", status, comment)
            yield destination.host, destination.port
            yield status_set(status, comment), None
            return
        sub: list[Any] = []  # the sub-association, once the destination accepted it
        tally = SubOperations(total=len(sops))
        yield destination.host, destination.port, {
            "contexts": self._move_contexts(sops), "ae_title": destination.name,
            "evt_handlers": [(evt.EVT_CONN_OPEN, nodelay),
                             (evt.EVT_ACCEPTED, lambda e: self._sub_accepted(e, sub, tally))]}
        yield from self._sub_operations(event, sops, "C-MOVE", destination.name,
                                        lambda sop: self._dataset(sop, sub[0] if sub else None),
                                        tally)

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
                          failed=[str(r.ReferencedSOPInstanceUID) for r in failed],
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
