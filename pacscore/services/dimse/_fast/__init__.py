"""pacscore's fast paths through pynetdicom: replacements of pynetdicom internals
(:mod:`.patches` lists and checks them), scoped to the associations of a pacscore
server (:mod:`.scope`).  Private: nothing outside :mod:`pacscore.services.dimse` uses
them."""
