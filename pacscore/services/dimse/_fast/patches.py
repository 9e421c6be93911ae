"""The pynetdicom internals pacscore's DIMSE fast paths replace or rely on, checked
before any of them is touched.

The fast paths (:mod:`.transport`, :mod:`.receive`, :mod:`.send`,
:mod:`.find`, :mod:`.accept`) replace pynetdicom methods and use private
attributes of its objects: names that a pynetdicom release may rename without notice.
``pyproject.toml`` pins the tested minor versions; on top of that :func:`install`
checks every name listed here (:data:`PATCHED`: what is replaced, with the parameters
the original must have; :data:`USED`: attributes read on live objects), and when one
is missing or changed it logs a warning and leaves pynetdicom as it is: the server
then runs on pynetdicom's own code, slower, with pynetdicom's association counting
and its ``select``-based socket checks (:class:`~.dimse.DimseServer` ``fast`` is
False).  Each replacement is installed scoped (:mod:`.scope`): it acts on the
associations of a pacscore server's AE, and any other pynetdicom association in the
process (a client or server of the program that embeds pacscore) runs pynetdicom's own
code.  ``tests/test_dimse_patches.py`` asserts that every name exists in the installed
version (the canary), that the fallback stores, echoes and finds, and that a foreign
association is left alone.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from . import receive as dimse_receive
from . import scope as dimse_scope
from . import transport as dimse_transport

__all__ = ["PATCHED", "USED", "install", "installed", "missing", "uninstall"]

log = logging.getLogger(__name__)

PATCHED: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("pynetdicom.transport.AssociationSocket.recv", ("self", "nr_bytes")),
    ("pynetdicom.transport.AssociationSocket.send", ("self", "bytestream")),
    ("pynetdicom.transport.AssociationSocket.ready", None),
    ("pynetdicom.association.time", None),
    ("pynetdicom.dul.time", None),
    ("pynetdicom.dul.DULServiceProvider.send_pdu", ("self", "primitive")),
    ("pynetdicom.dul.DULServiceProvider.stop_dul", ("self",)),
    ("pynetdicom.dul.DULServiceProvider.kill_dul", ("self",)),
    ("pynetdicom.dul.DULServiceProvider.run_reactor", ("self",)),
    ("pynetdicom.dimse.DIMSEServiceProvider.get_msg", ("self", "block")),
    ("pynetdicom.dul.DULServiceProvider._read_pdu_data", ("self",)),
    ("pynetdicom.dimse_messages.create_file_meta",
     ("sop_class_uid", "sop_instance_uid", "transfer_syntax", "implementation_uid",
      "implementation_version")),
    ("pynetdicom.dimse_messages.write_file_meta_info", ("fp", "file_meta", "enforce_standard")),
    ("pynetdicom.dimse_messages.NamedTemporaryFile", None),
    ("pynetdicom.transport.RequestHandler.handle", ("self",)),
)
"""Every pynetdicom attribute pacscore replaces (``dimse_transport.PATCHES``,
``dimse_receive.PATCHES``, ``dimse_accept``), with
the parameter names its original must have (None: not a function)."""

USED: tuple[str, ...] = (
    # functions called, with the parameters passed
    "pynetdicom.transport.RequestHandler._create_association(self)",
    "pynetdicom.ae.ApplicationEntity.make_server(self, address, ae_title, contexts, "
    "ssl_context, evt_handlers, server_class, kwargs)",
    "pynetdicom.association.Association._get_valid_context(self, ab_syntax, tr_syntax, "
    "role, context_id, allow_conversion)",
    "pynetdicom.association.Association.send_c_store(self, dataset, msg_id, priority, "
    "originator_aet, originator_id)",
    "pynetdicom.dul.DULServiceProvider._decode_pdu(self, bytestream)",
    "pynetdicom.transport.ThreadedAssociationServer.active_associations",
    "pynetdicom.pdu_primitives.P_DATA.presentation_data_value_list",
    "pynetdicom.association.Association._run_reactor(self)",
    # attributes of live objects (an acceptor Association and its socket)
    "ae._servers", "assoc._accepted_cx", "assoc._reactor_checkpoint",
    "assoc._server", "assoc.dimse.message", "assoc.dimse.msg_queue",
    "assoc.dimse.maximum_pdu_size", "assoc.dimse.receive_primitive", "assoc.dimse.get_msg",
    "assoc.dimse.send_msg", "assoc.dimse.assoc", "assoc.dul.event_queue", "assoc.dul._recv_pdu",
    "assoc.dul._idle_timer", "assoc.dul.state_machine.current_state", "assoc.dul.socket",
    "assoc.dul.assoc", "assoc.ae", "transport.assoc", "transport._is_connected",
    "transport.socket", "transport.event_queue",
)
"""Every other pynetdicom name the fast paths read or call: ``module.Class.name(params)``
for functions, ``ae.``/``assoc.``/``transport.`` paths on live objects."""


def _resolve(dotted: str) -> Any:
    """The object a dotted path names (a module, then attributes): pynetdicom's own
    when pacscore replaced it; AttributeError or ImportError when it does not exist."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            owner = obj
            obj = inspect.getattr_static(obj, name) if isinstance(obj, type) \
                else getattr(obj, name)
            obj = _originals.get((owner, name), obj)
        return obj
    raise ImportError(dotted)


def _parameters(obj: Any) -> tuple[str, ...]:
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    return tuple(inspect.signature(obj).parameters)


def _live() -> dict[str, Any]:
    """An AE, an acceptor Association (not started) and its socket, to look at."""
    ae = AE()
    assoc = Association(ae, "acceptor")
    ours, peer = socket.socketpair()
    transport = AssociationSocket(assoc, client_socket=ours)
    peer.close()
    return {"ae": ae, "assoc": assoc, "transport": transport}


def missing(patched: Sequence[tuple[str, tuple[str, ...] | None]] = PATCHED,  # noqa: C901
            used: Sequence[str] = USED) -> list[str]:
    """The names of ``patched`` and ``used`` that the installed pynetdicom lacks, or
    whose parameters differ (each with what was expected); empty when all fit."""
    problems = []
    for dotted, params in patched:
        try:
            found = _resolve(dotted)
            if params is not None and _parameters(found) != params:
                problems.append(f"{dotted}{params}: now {_parameters(found)}")
        except (AttributeError, ImportError, TypeError, ValueError):
            problems.append(f"{dotted}: missing")
    objects = None
    for name in used:
        dotted, _, rest = name.partition("(")
        try:
            if dotted.split(".")[0] in ("ae", "assoc", "transport"):
                objects = objects or _live()
                first, *attrs = dotted.split(".")
                obj = objects[first]
                for attr in attrs:
                    obj = getattr(obj, attr)
                continue
            found = _resolve(dotted)
            wanted = tuple(p.strip() for p in rest.rstrip(")").split(",")) if rest else None
            if wanted is not None and _parameters(found) != wanted:
                problems.append(f"{name}: now {_parameters(found)}")
        except (AttributeError, ImportError, TypeError, ValueError):
            problems.append(f"{name}: missing")
    if objects is not None:
        transport = objects["transport"]
        if transport.socket is not None:
            transport.socket.close()
    return problems


_lock = threading.Lock()
_originals: dict[tuple[Any, str], Any] = {}
"""What :func:`install` replaced, to put back (:func:`uninstall`)."""


def _patches() -> tuple[tuple[Any, str, Any], ...]:
    return dimse_transport.PATCHES + dimse_receive.PATCHES


def install(patched: Sequence[tuple[str, tuple[str, ...] | None]] = PATCHED,
            used: Sequence[str] = USED) -> bool:
    """Install the fast paths when every name of ``patched`` and ``used`` fits the
    installed pynetdicom and return True; otherwise log which do not, leave (or put
    back) pynetdicom's own code and return False.  Process-wide, idempotent."""
    problems = missing(patched, used)
    with _lock:
        if problems:
            log.warning("pynetdicom %s lacks what pacscore's DIMSE fast paths use (%s): "
                        "running on pynetdicom's own code, slower (install the pynetdicom "
                        "version pyproject.toml names)", _version(), "; ".join(problems))
            _restore()
            return False
        for owner, name, replacement in _patches():
            if (owner, name) not in _originals:  # idempotent: scoped once
                original = inspect.getattr_static(owner, name)
                _originals[(owner, name)] = original
                setattr(owner, name, dimse_scope.scoped(owner, replacement, original))
        return True


def installed() -> bool:
    """Whether the fast paths are installed."""
    return bool(_originals)


def uninstall() -> None:
    """Put pynetdicom's own code back."""
    with _lock:
        _restore()


def _restore() -> None:
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()


def _version() -> str:
    import pynetdicom

    return str(getattr(pynetdicom, "__version__", "?"))
