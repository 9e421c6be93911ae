"""Network front ends over :class:`pacscore.Archive` (DIMSE so far)."""
