"""Who may talk to the archive, and the audit trail of what they did.

* :class:`AeRegistry`: DIMSE peers (calling AE title + host allow-list, per-AE rights,
  and the port of C-MOVE destinations), kept in ``<archive>/security/ae.json``.
* :class:`SenderList`: the source addresses HL7 (MLLP) peers may connect from, in
  ``<archive>/security/hl7.json`` (MLLP has no credentials of its own).
* :class:`AuditLog`: append-only JSON lines in ``<archive>/audit/audit.jsonl`` with the
  DICOM audit event types of PS3.15 A.5 (DCM codes).  No pixel data and no patient
  names: UIDs, AE titles, hosts and outcomes only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import PacsError
from ...private import make_private_dir

if TYPE_CHECKING:
    from ...workflow.corrections import PatientEvent
    from ...workflow.worklist import WorkflowEvent

__all__ = ["AUDIT_EVENTS", "RIGHTS", "AeEntry", "AeRegistry", "AuditLog", "SenderList",
           "canonical_address", "outcome_of"]

RIGHTS: tuple[str, ...] = ("echo", "store", "find", "get", "move", "worklist", "mpps")
"""What a DIMSE peer may be allowed to do (``worklist``: Modality Worklist C-FIND;
``mpps``: Modality Performed Procedure Step N-CREATE/N-SET)."""

# PS3.15 A.5.1 / PS3.16 CID 400: audit event IDs (code value, meaning).
AUDIT_EVENTS: dict[str, tuple[str, str]] = {
    "application": ("110100", "Application Activity"),
    "accessed": ("110103", "DICOM Instances Accessed"),
    "transferred": ("110104", "DICOM Instances Transferred"),
    "deleted": ("110105", "DICOM Study Deleted"),
    "export": ("110106", "Export"),  # reports sent out (HL7 ORU^R01)
    "procedure": ("110111", "Procedure Record"),  # worklist items added, cancelled; MPPS
    "patient": ("110110", "Patient Record"),  # patient corrections, merges, undos
    "query": ("110112", "Query"),
    "security": ("110113", "Security Alert"),
    "authentication": ("110114", "User Authentication"),
}
# PS3.15 A.5.3: EventOutcomeIndicator.
OUTCOME = {"success": 0, "minor": 4, "serious": 8, "major": 12}


def outcome_of(status: int) -> str:
    """The audit outcome of a DIMSE exchange that ended with ``status``: what the peer
    was told (PS3.7 C: 0x0000 success; 0x0001 and 0xBxxx warnings, some of it failed:
    a minor failure; 0xFE00 cancelled on request: success; any other failure, e.g.
    0xA7xx, 0xA9xx, 0xCxxx, 0x01xx refusals: a serious failure, the action ended)."""
    if status in (0x0000, 0xFE00):
        return "success"
    if status == 0x0001 or status & 0xF000 == 0xB000:
        return "minor"
    return "serious"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash


@dataclass(frozen=True, slots=True)
class AeEntry:
    """A registered DIMSE peer."""

    name: str
    """AE title."""
    host: str
    """Address it connects from (and is reached at for C-MOVE)."""
    port: int | None = None
    """Listening port (needed for C-MOVE destinations)."""
    rights: tuple[str, ...] = field(default=RIGHTS)
    """Operations it may request."""


class AeRegistry:
    """The allow-list, read on every check so ``pacscore ae`` changes apply at once."""

    def __init__(self, archive_dir: Path):
        self.path = archive_dir / "security" / "ae.json"
        self._cache: tuple[bytes, dict[str, AeEntry]] = (b"", {})

    def _load(self) -> dict[str, AeEntry]:
        """The registered peers; parsed again only when the file's bytes changed (``ae
        add`` from another process replaces it; every DIMSE request checks it)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        if data != self._cache[0]:
            raw = json.loads(data)
            self._cache = (data, {
                k: AeEntry(k, v["host"], v.get("port"), tuple(v.get("rights", RIGHTS)))
                for k, v in raw.items()})
        return dict(self._cache[1])

    def _save(self, entries: dict[str, AeEntry]) -> None:
        make_private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        data = {k: {kk: vv for kk, vv in asdict(v).items() if kk != "name"}
                for k, v in sorted(entries.items())}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, self.path)

    def add(self, name: str, host: str, port: int | None = None,
            rights: tuple[str, ...] = RIGHTS) -> AeEntry:
        """Register (or replace) a peer."""
        if not _AE_TITLE.match(name) or name != name.strip():
            raise PacsError(f"invalid AE title {name!r}",
                            hint="1-16 printable characters, no backslash, no padding")
        unknown = [r for r in rights if r not in RIGHTS]
        if unknown:
            raise PacsError(f"unknown rights {unknown}", hint=f"use {', '.join(RIGHTS)}")
        if not _addresses(host):
            raise PacsError(f"host {host!r} of {name} is neither an IP address nor a name "
                            "that resolves here",
                            hint="give the address the peer connects from, or fix its "
                                 "name in DNS or /etc/hosts")
        entries = self._load()
        entries[name] = AeEntry(name, host, port, tuple(rights))
        self._save(entries)
        return entries[name]

    def remove(self, name: str) -> bool:
        """Unregister a peer; False if it was not registered."""
        entries = self._load()
        if entries.pop(name, None) is None:
            return False
        self._save(entries)
        return True

    def list(self) -> list[AeEntry]:
        """Every registered peer."""
        return list(self._load().values())

    def get(self, name: str) -> AeEntry | None:
        """One peer."""
        return self._load().get(name)

    def allows(self, name: str, host: str, right: str) -> bool:
        """The peer is registered, connects from its host, and holds ``right``."""
        entry = self._load().get(name.strip())
        return entry is not None and right in entry.rights \
            and (_ip(host) or host) in _addresses(entry.host)


class SenderList:
    """The hosts HL7 senders may connect from (none by default: every MLLP connection
    is refused until ``pacscore hl7 allow HOST``); read on every connection."""

    def __init__(self, archive_dir: Path):
        self.path = archive_dir / "security" / "hl7.json"

    def hosts(self) -> list[str]:
        """The allowed hosts (names or addresses, as given)."""
        try:
            return list(json.loads(self.path.read_bytes()))
        except FileNotFoundError:
            return []

    def _save(self, hosts: list[str]) -> None:
        make_private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sorted(set(hosts)), f, indent=2)
        os.replace(tmp, self.path)

    def allow(self, host: str) -> None:
        """Allow ``host`` (an address, or a name that resolves here)."""
        if not _addresses(host):
            raise PacsError(f"host {host!r} is neither an IP address nor a name that "
                            "resolves here", hint="give the address the sender connects from")
        self._save([*self.hosts(), host])

    def deny(self, host: str) -> bool:
        """Remove ``host``; False if it was not allowed."""
        hosts = self.hosts()
        if host not in hosts:
            return False
        self._save([h for h in hosts if h != host])
        return True

    def allows(self, address: str) -> bool:
        """A connection from ``address`` may send messages."""
        ip = _ip(address) or address
        return any(ip in _addresses(host) for host in self.hosts())


def canonical_address(address: str) -> str:
    """``address`` in one spelling when it is an IP address (see :func:`_ip`), else as
    it is: the key connections are counted under."""
    return _ip(address) or address


def _ip(address: str) -> str | None:
    """An IP address in one spelling (an IPv4-mapped IPv6 address as IPv4; a zone
    index dropped); None when ``address`` is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    return str(getattr(ip, "ipv4_mapped", None) or ip)


_RESOLVED_FOR = 60.0
"""Seconds a host name's addresses are trusted before it is resolved again."""
_resolved: dict[str, tuple[float, frozenset[str]]] = {}


def _addresses(host: str) -> frozenset[str]:
    """The addresses a registered host stands for: itself when it is an IP address,
    else what its name resolves to (cached for :data:`_RESOLVED_FOR` seconds; empty
    when it does not resolve, so nobody connects as it)."""
    ip = _ip(host)
    if ip is not None:
        return frozenset({ip})
    now = time.monotonic()
    cached = _resolved.get(host)
    if cached is not None and now - cached[0] < _RESOLVED_FOR:
        return cached[1]
    try:
        found = frozenset(_ip(str(info[4][0])) or str(info[4][0]) for info in
                          socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, UnicodeError):
        found = frozenset()
    _resolved[host] = (now, found)
    return found


class AuditLog:
    """Thread-safe append-only audit trail."""

    def __init__(self, archive_dir: Path):
        self.path = archive_dir / "audit" / "audit.jsonl"
        make_private_dir(self.path.parent)
        self._lock = threading.Lock()
        self._fd = -1
        self._inode = -1
        self._closer: Callable[[], Any] = lambda: None

    def _descriptor(self) -> int:
        """The log opened for appending; reopened when it was rotated away (a new inode
        at the path).  One ``write`` per line on an O_APPEND descriptor: lines from
        several writers (DIMSE, DICOMweb, gRPC, other processes) never interleave."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = -1
        if self._fd < 0 or inode != self._inode:
            self._closer()  # closes the previous descriptor once, if any
            self._fd = -1
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._inode = os.fstat(self._fd).st_ino
            self._closer = weakref.finalize(self, os.close, self._fd)
        return self._fd

    def record(self, event: str, *, action: str, outcome: str, user: str, host: str,
               interface: str, objects: list[str] | None = None, detail: str = "",
               failed: list[str] | None = None) -> None:
        """Append one event (``action``: C/R/U/D/E as in PS3.15 A.5.1; ``objects``:
        the SOP Instance UIDs it was done to, ``failed``: those it failed for)."""
        code, meaning = AUDIT_EVENTS[event]
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
            "action": action, "outcome": OUTCOME[outcome], "user": user, "host": host,
            "interface": interface,
        }
        if objects:
            entry["objects"] = objects
        if failed:
            entry["failed_objects"] = failed
        if detail:
            entry["detail"] = detail
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        data = memoryview(line.encode())
        with self._lock:
            fd = self._descriptor()
            while data:
                data = data[os.write(fd, data):]

    def workflow(self, event: WorkflowEvent | PatientEvent, *, interface: str,
                 host: str = "") -> None:
        """Record a worklist change (Procedure Record, PS3.15 A.5.3.11): the item's key,
        status and Accession Number; or a patient correction, merge or undo (Patient
        Record, A.5.3.12): its number in the correction log.  No patient data."""
        from ...workflow.corrections import PatientEvent as Patient

        if isinstance(event, Patient):
            self.record("patient", action=event.action, outcome="success", user=event.by,
                        host=host, interface=interface, objects=[f"correction {event.number}"],
                        detail=f"patient correction {event.number}: {event.what}")
            return
        self.record("procedure", action=event.action, outcome="success", user=event.by,
                    host=host, interface=interface, objects=[event.key],
                    detail=f"worklist item {event.key} {event.status}"
                           + (f", accession {event.accession}" if event.accession else ""))
