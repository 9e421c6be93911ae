"""The gRPC modules generated from ``pacscore.proto`` when pacscore was built or
installed (``setup.py``'s ``build_grpc`` step runs grpcio-tools); never hand-edited."""

from __future__ import annotations

from types import ModuleType

from ...errors import PacsError

__all__ = ["load"]


def load() -> tuple[ModuleType, ModuleType]:
    """(messages module, services module)."""
    try:
        from . import pacscore_pb2, pacscore_pb2_grpc
    except ImportError as exc:
        raise PacsError("pacscore's gRPC code was not generated",
                        hint="install pacscore with pip (`pip install .` or "
                             "`pip install -e .`): the build generates it from "
                             "pacscore.proto") from exc
    return pacscore_pb2, pacscore_pb2_grpc
