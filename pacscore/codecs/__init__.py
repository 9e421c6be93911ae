"""Codec registry: one module per transfer syntax, found through a table.

Adding a codec means adding a module that defines ``CODEC`` (a
:class:`~pacscore.codecs.base.FrameCodec`) and one line in :data:`pacscore.kinds.CODECS`.
Modules are imported on first use.
"""

from __future__ import annotations

import importlib

from ..errors import UnsupportedTransferSyntaxError
from ..kinds import CODEC_NAMES, CODECS
from .base import Frame, FrameCodec

__all__ = ["CODEC_NAMES", "Frame", "FrameCodec", "by_name", "by_syntax", "encodable_syntaxes"]

_loaded: dict[str, FrameCodec] = {}


def by_name(name: str) -> FrameCodec:
    """Return the codec called ``name``."""
    if name not in _loaded:
        if name not in CODECS:
            raise UnsupportedTransferSyntaxError(
                f"unknown codec {name!r}; known: {', '.join(CODEC_NAMES)}"
            )
        module = importlib.import_module(f"{__name__}.{CODECS[name][0]}")
        _loaded[name] = module.CODEC
    return _loaded[name]


def by_syntax(uid: str) -> FrameCodec | None:
    """Return the codec writing transfer syntax ``uid``, or None."""
    for name, (_, ts) in CODECS.items():
        if ts == uid:
            return by_name(name)
    return None


def encodable_syntaxes() -> tuple[str, ...]:
    """Transfer syntax UIDs this build can encode to."""
    return tuple(ts for _, ts in CODECS.values())
