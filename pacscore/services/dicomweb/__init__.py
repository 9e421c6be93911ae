"""The DICOMweb door (starlette): the app and its routes (:mod:`.app`), media types
(:mod:`.media`), answers (:mod:`.answers`), STOW-RS (:mod:`.stow`), bulk data
(:mod:`.bulkdata`), multipart bodies (:mod:`.multipart`) and the HTTP server's limits
(:mod:`.http_limits`)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: ..auth.access imports modules of this package, and .app
    # imports ..auth.access (importing access first used to fail on the cycle).
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
