"""Workflow state beside the archive: the Modality Worklist (scheduled procedure steps)
and the Modality Performed Procedure Steps that drive them (:mod:`.mpps`).

:class:`Worklist` is reached as :attr:`pacscore.Archive.worklist`; the DIMSE door
answers Modality Worklist C-FIND from it, ``pacscore worklist`` manages it.
"""

from __future__ import annotations

from ..kinds import StepStatus
from .items import item_from_pairs, read_item
from .mpps import MPPS_SOP_CLASS, PerformedStep, PerformedSteps
from .worklist import LISTED, WorkflowEvent, Worklist, WorklistItem

__all__ = ["LISTED", "MPPS_SOP_CLASS", "PerformedStep", "PerformedSteps", "StepStatus",
           "WorkflowEvent", "Worklist", "WorklistItem", "item_from_pairs", "read_item"]
