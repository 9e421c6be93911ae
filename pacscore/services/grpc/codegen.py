"""Generate the gRPC Python modules from ``pacscore.proto`` with grpcio-tools.

Run by the build (``setup.py``'s ``build_grpc`` step, so ``pip install`` and
``pip install -e`` produce them) and by nothing at run time.  Standard library and
grpc_tools only: the build imports this file before pacscore's dependencies exist.
The outputs are ``pacscore_pb2.py`` (+ ``.pyi``) and ``pacscore_pb2_grpc.py`` next to
the proto, with package-qualified imports; they are never edited by hand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PACKAGE = ("pacscore", "services", "grpc")
OUTPUTS = ("pacscore_pb2.py", "pacscore_pb2.pyi", "pacscore_pb2_grpc.py")


def generate(source_root: Path, out_root: Path) -> list[Path]:
    """Compile ``<source_root>/pacscore/services/grpc/pacscore.proto`` into
    ``<out_root>/pacscore/services/grpc/``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    proto = Path(*PACKAGE, "pacscore.proto")
    target = out_root.joinpath(*PACKAGE)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        args = ["protoc", f"-I{source_root}",
                f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
                str(proto)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source_root / proto}")
        written = []
        for name in OUTPUTS:
            dest = target / name
            os.replace(Path(tmp).joinpath(*PACKAGE, name), dest)  # atomic per file
            written.append(dest)
    return written
