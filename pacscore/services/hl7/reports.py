"""Reports out (IHE RAD Reporting Workflow, results to the RIS/EMR): every DICOM SR
report the archive stores is sent as an ORU^R01 (:mod:`.oru`) over MLLP to the
configured receiver, through the persistent :class:`~.outbox.Outbox`.

* Queued in the committing thread, as soon as the SR is acknowledged (one small LMDB
  transaction; only for SR classes of :data:`~pacscore.dicom.report.REPORT_CLASSES`).
  At start, SRs the ledger does not know are queued too: those a crash between the
  commit and the queueing left behind.  The first start with a receiver records the
  SRs already stored as ``before`` (a new interface does not resend the archive's
  history).
* Sent in queue order by one thread: the message is built at the first attempt and kept,
  so resends are identical.  ``AA``/``CA`` (with MSA-2 = our MSH-10): sent, removed;
  ``AR``/``CR``: refused, kept and listed (``pacscore hl7 outbox``) until ``pacscore hl7
  resend``; ``AE``/``CE``, no answer, a wrong answer, a receiver that is down: tried
  again after a backoff doubling from ``retry`` seconds up to five minutes.  While the
  receiver is unreachable the later entries wait (results keep their order).
* Every sent or refused report is in the audit trail (DICOM "Export", PS3.15 A.5.3.5).
* On an archive whose index is PostgreSQL the outbox is the archive's, shared by its
  front ends: each runs a sender, but a pass over the due entries runs under the
  cluster-wide lock ``hl7-reports`` (:func:`pacscore.background.exclusive`), so each
  report is sent by one front end, once (a front end that dies between the receiver's
  ACK and the commit of ``sent`` leaves it to be resent, with the same MSH-10, as
  after a restart).  A sender that did not queue an entry looks for due ones every
  :data:`SHARED_POLL` seconds (another front end may have queued it, or died).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence

from ...archive import Archive, StoreResult
from ...background import exclusive
from ...dicom.report import REPORT_CLASSES, read_report
from ...errors import PacsError
from ..auth.security import AuditLog
from .oru import build_oru
from .outbox import Outbox, OutboxEntry

__all__ = ["SHARED_POLL", "ReportSender", "parse_destination"]

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
_MAX_BACKOFF = 300.0
_MAX_ACK = 1 << 20
_ACCEPTED, _REFUSED = frozenset({"AA", "CA"}), frozenset({"AR", "CR"})
SHARED_POLL = 5.0
"""Seconds between two looks at a shared outbox (module docstring)."""


def parse_destination(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port); ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"HL7 report receiver {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class _RefusedError(Exception):
    """The receiver refused the message as such (AR/CR), or it cannot be built."""


class ReportSender:
    """Queues the archive's new SR reports and sends them to one receiver."""

    def __init__(self, archive: Archive, destination: str, *, audit: AuditLog | None = None,
                 retry: float = 2.0, timeout: float = 30.0, receiving: str = "",
                 facility: str = ""):
        self.archive, self.destination = archive, destination
        self.host, self.port = parse_destination(destination)
        self.audit, self.retry, self.timeout = audit, retry, timeout
        self.receiving, self.facility = receiving, facility
        self.outbox = Outbox(archive.root, index=archive.index)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- queueing ----------------------------------------------------------------
    def _stored_reports(self) -> list[str]:
        """SOP Instance UIDs of the SR reports in the archive (series of modality SR)."""
        found = []
        for series in self.archive.find("series", Modality="SR"):
            for inst in self.archive.find("instance",
                                          SeriesInstanceUID=series["SeriesInstanceUID"]):
                if inst.get("SOPClassUID") in REPORT_CLASSES:
                    found.append(str(inst["SOPInstanceUID"]))
        return found

    def catch_up(self) -> int:
        """At start: queue stored reports the ledger does not know (the first time:
        record them as sent before); how many were queued."""
        stored = self._stored_reports()
        if not self.outbox.started():
            self.outbox.mark_before(stored)
            self.outbox.start()
            return 0
        queued = self.outbox.enqueue(stored, self.destination)
        for entry in queued:
            log.warning("HL7 report of %s was not queued before a restart; queued now (%s)",
                        entry.sop_instance_uid, entry.key)
        return len(queued)

    def stored(self, results: Sequence[StoreResult]) -> None:
        """Archive listener: queue the reports among ``results``."""
        sops = [r.sop_instance_uid for r in results if r.sop_class_uid in REPORT_CLASSES]
        if sops and self.outbox.enqueue(sops, self.destination):
            self._wake.set()

    # -- running -------------------------------------------------------------------
    def start(self) -> None:
        """Catch up, listen to the archive and start sending."""
        self.catch_up()
        self.archive.on_change(self.stored)
        self._thread = threading.Thread(target=self._run, name="pacscore-hl7-reports",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending (what is queued stays queued) and close the outbox."""
        self.archive.off_change(self.stored)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        self.outbox.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception:  # the thread must live: log, wait, try again
                log.exception("HL7 report sender failed; retrying")
                self._stop.wait(self.retry)
            after = self.outbox.next_try()
            wait = None if after is None else max(0.0, after - time.time())
            if self.outbox.shared:
                wait = SHARED_POLL if wait is None else min(wait, SHARED_POLL)
            self._wake.wait(wait)
            self._wake.clear()

    def send_due(self) -> int:
        """Send the entries that are due, in order; stop at the first that could not
        be delivered (the receiver is probably down).  How many were acknowledged
        (0 when another front end is sending: module docstring)."""
        with exclusive(self.archive.index, "hl7-reports") as mine:
            return self._send_due() if mine else 0

    def _send_due(self) -> int:
        done = 0
        for entry in self.outbox.due(time.time()):
            if self._stop.is_set():
                break
            try:
                answer = self._deliver(entry)
            except _RefusedError as exc:
                self.outbox.refused(entry.key, str(exc))
                self._audit(entry, "serious", f"refused: {exc}")
                continue
            except (OSError, ValueError) as exc:
                backoff = min(self.retry * 2 ** entry.attempts, _MAX_BACKOFF)
                reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)
                self.outbox.failed(entry.key, reason, time.time() + backoff)
                log.warning("HL7 report %s to %s not delivered (%s); next try in %.0f s",
                            entry.control_id, self.destination, reason, backoff)
                break
            self.outbox.sent(entry.key, answer)
            self._audit(entry, "success", f"acknowledged {answer}")
            done += 1
        return done

    def _message(self, entry: OutboxEntry) -> str:
        if entry.message:
            return entry.message
        try:
            # as served: the patient corrections in force (PID of a merged patient)
            report = read_report(self.archive.get(entry.sop_instance_uid, "stored"),
                                 entry.sop_instance_uid)
        except PacsError as exc:  # deleted meanwhile, or not a readable report
            raise _RefusedError(f"cannot build the report: {exc.reason}") from exc
        message = build_oru(report, entry.control_id, receiving=self.receiving,
                            facility=self.facility)
        self.outbox.built(entry.key, message)
        return message

    def _deliver(self, entry: OutboxEntry) -> str:
        """Send one message and read its ACK: the MSA-1 code when accepted; _RefusedError
        for AR/CR; ValueError for AE/CE or an answer that is not its ACK."""
        message = self._message(entry)
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(START + message.encode("utf-8") + END)
            reply = b""
            while END not in reply:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("the receiver closed the connection without an ACK")
                reply += chunk
                if len(reply) > _MAX_ACK:
                    raise ValueError("the receiver's answer is over 1 MiB without an end block")
        return _acknowledgement(reply, entry.control_id)

    def _audit(self, entry: OutboxEntry, outcome: str, detail: str) -> None:
        if self.audit is not None:
            self.audit.record("export", action="R", outcome=outcome, user="PACSCORE",
                              host=self.destination, interface="hl7",
                              objects=[entry.sop_instance_uid],
                              detail=f"ORU^R01 {entry.control_id} to {self.destination}: "
                                     f"{detail}")


def _acknowledgement(reply: bytes, control_id: str) -> str:
    """MSA-1 of the ACK in ``reply`` when it acknowledges ``control_id``."""
    text = reply[reply.find(START) + 1: reply.find(END)].decode("utf-8", "replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    msh = segments[0] if segments and segments[0].startswith("MSH") else ""
    sep = msh[3:4] or "|"
    msa = next((s.split(sep) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 3:
        raise ValueError(f"the receiver's answer has no MSA segment: {text[:200]!r}")
    code, acked = msa[1].strip().upper(), msa[2].strip()
    if acked != control_id:
        raise ValueError(f"the receiver acknowledged {acked!r}, not {control_id!r}")
    if code in _ACCEPTED:
        return code
    error = next((s for s in segments if s.startswith("ERR")), "")
    if code in _REFUSED:
        raise _RefusedError(f"{code} {(msa[3] if len(msa) > 3 else '') or error}".strip())
    raise ValueError(f"the receiver answered {code} {(msa[3] if len(msa) > 3 else '') or error}"
                     .strip())
