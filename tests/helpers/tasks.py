"""Job-engine tasks that misbehave on purpose (imported by worker processes)."""

from __future__ import annotations

import os


def crash_on_three(x: int) -> int:
    """Dies like a codec segfault on 3."""
    if x == 3:
        os._exit(139)
    return x * 10


def raise_on_five(x: int) -> int:
    """Raises on 5 (tasks are written never to raise; the engine copes anyway)."""
    if x == 5:
        raise ValueError("five is not allowed")
    return x * 10
