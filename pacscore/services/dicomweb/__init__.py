"""The DICOMweb door (starlette): the app and its routes (:mod:`.app`), media types
(:mod:`.media`), answers (:mod:`.answers`), STOW-RS (:mod:`.stow`), bulk data
(:mod:`.bulkdata`), multipart bodies (:mod:`.multipart`) and the HTTP server's limits
(:mod:`.http_limits`)."""

from .app import create_app

__all__ = ["create_app"]
