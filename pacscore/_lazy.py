"""Package attributes imported on first use (PEP 562).

``pacscore``, ``pacscore.jobs`` and the command line import numba kernels, zarr,
pydicom and the codecs only when something uses them: ``pacscore --help`` and
``import pacscore.errors`` stay fast (issue 14.2; ``benches/test_startup.py``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attributes"]


def attributes(package: str, table: Mapping[str, str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``table`` is taken
    from its module (relative to ``package``) when first asked for, then kept."""

    def lookup(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def listing() -> list[str]:
        return sorted({*vars(sys.modules[package]), *table})

    return lookup, listing
