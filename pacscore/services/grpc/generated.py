"""The gRPC modules generated from ``pacscore.proto`` when pacscore was built or
installed (``setup.py``'s ``build_grpc`` step runs grpcio-tools); never hand-edited."""

from __future__ import annotations

from types import ModuleType

from ...errors import PacsError

__all__ = ["load"]


def load() -> tuple[ModuleType, ModuleType]:
    """(messages module, services module)."""
    try:
        # (mypy resolves these names in the grpcio package, not in this one)
        from . import pacscore_pb2, pacscore_pb2_grpc  # type: ignore[attr-defined]
    except ImportError as exc:
        raise PacsError("pacscore's gRPC code was not generated",
                        hint="install pacscore with pip (`pip install .` or "
                             "`pip install -e .`): the build generates it from "
                             "pacscore.proto") from exc
    except Exception as exc:  # the generated code checks its grpcio/protobuf runtime
        raise PacsError(f"pacscore's gRPC code does not run on the installed grpcio/"
                        f"protobuf: {exc}",
                        hint="pip install -U 'grpcio>=1.85.1' 'protobuf>=7.35.1', or "
                             "reinstall pacscore with --no-build-isolation to generate "
                             "the code with the installed grpcio-tools") from exc
    return pacscore_pb2, pacscore_pb2_grpc
