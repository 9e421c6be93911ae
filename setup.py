"""Build hook: generate the gRPC modules from the proto at build/install time.

Metadata lives in pyproject.toml.  ``build_grpc`` runs as a ``build`` sub-command, so
``pip install .`` writes the generated modules into the wheel and ``pip install -e .``
(PEP 660, ``editable_mode``) writes them into the source tree, where git ignores them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build import build

HERE = Path(__file__).resolve().parent


class BuildGrpc(Command):
    description = "generate pacscore_pb2*.py from pacscore/services/grpc/pacscore.proto"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _codegen(self):  # type: ignore[no-untyped-def]
        path = HERE / "pacscore" / "services" / "grpc" / "codegen.py"
        spec = importlib.util.spec_from_file_location("pacscore_codegen", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def run(self) -> None:
        out = HERE if self.editable_mode or self.build_lib is None else Path(self.build_lib)
        for path in self._codegen().generate(HERE, out):
            print(f"build_grpc: wrote {path}")

    def get_source_files(self) -> list[str]:
        return ["pacscore/services/grpc/pacscore.proto"]

    def get_outputs(self) -> list[str]:
        if self.editable_mode or self.build_lib is None:
            return []
        base = Path(self.build_lib, "pacscore", "services", "grpc")
        return [str(base / name) for name in self._codegen().OUTPUTS]

    def get_output_mapping(self) -> dict[str, str]:
        return {}


build.sub_commands.append(("build_grpc", None))
setup(cmdclass={"build_grpc": BuildGrpc})
