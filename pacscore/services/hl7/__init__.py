"""The HL7 v2 door (MLLP): ADT and order messages from a RIS/HIS → the worklist.

``pacscore serve --hl7-port 2575`` starts it; senders are allowed by source address
(``pacscore hl7 allow HOST``).  :mod:`.messages` parses (python-hl7) and answers,
:mod:`.actions` holds the tables of what each message does, :mod:`.mllp` the server.
"""

from __future__ import annotations

from .mllp import MllpServer, MllpSettings

__all__ = ["MllpServer", "MllpSettings"]
