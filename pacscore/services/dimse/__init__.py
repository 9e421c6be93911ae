"""The DIMSE door (pynetdicom): :class:`~.server.DimseServer`, its retrieve handlers
(:mod:`.retrieve`), and pacscore's fast paths through pynetdicom in the private
:mod:`._fast` (scoped to pacscore's own associations; checked before use)."""

from .server import STATUS, DimseServer

__all__ = ["STATUS", "DimseServer"]
