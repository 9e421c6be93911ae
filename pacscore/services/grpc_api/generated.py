"""Python code generated from ``pacscore.proto`` with grpcio-tools, never hand-edited.

Generated on first use into a cache directory keyed by the proto's hash (so an edited
proto regenerates), written atomically, and imported from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["PROTO", "load"]

PROTO = Path(__file__).with_name("pacscore.proto")
_loaded: tuple[ModuleType, ModuleType] | None = None


def _generate(out: Path) -> None:
    from grpc_tools import protoc

    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        args = ["protoc", f"-I{PROTO.parent}", f"--python_out={staging}",
                f"--grpc_python_out={staging}", PROTO.name]
        include = Path(protoc.__file__).parent / "_proto"
        args.insert(1, f"-I{include}")
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        with contextlib.suppress(OSError):  # another process generated it first
            os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load() -> tuple[ModuleType, ModuleType]:
    """(messages module, services module), generating them if needed."""
    global _loaded
    if _loaded is None:
        digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
        cache = Path(os.environ.get("PACSCORE_GRPC_CACHE") or tempfile.gettempdir())
        out = cache / f"pacscore-grpc-{digest}"
        if not (out / "pacscore_pb2_grpc.py").exists():
            cache.mkdir(parents=True, exist_ok=True)
            _generate(out)
        modules = []
        for name in ("pacscore_pb2", "pacscore_pb2_grpc"):
            spec = importlib.util.spec_from_file_location(name, out / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # the services module imports the messages by name
            spec.loader.exec_module(module)
            modules.append(module)
        _loaded = (modules[0], modules[1])
    return _loaded
