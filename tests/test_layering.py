"""Codecs and the frame store stand apart from the header parser (issue 15.7d)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pacscore

# pacscore/__init__.py imports the whole archive: bind an empty package instead, so what
# is measured is what pacscore.codecs and pacscore.store import themselves.
ISOLATED = f"""
import sys, types
pkg = types.ModuleType("pacscore")
pkg.__path__ = [{str(Path(pacscore.__file__).parent)!r}]
sys.modules["pacscore"] = pkg
import pacscore.codecs, pacscore.store, pacscore.dicom.layout
loaded = sorted(m for m in sys.modules if m.startswith("pacscore."))
assert "pacscore.dicom.header" not in loaded, loaded
print(" ".join(loaded))
"""


def test_codecs_and_store_do_not_import_the_header_parser() -> None:
    out = subprocess.run([sys.executable, "-c", ISOLATED], check=True, capture_output=True,
                         text=True).stdout.split()
    assert "pacscore.store.zarr_store" in out and "pacscore.codecs.base" in out
    assert "pacscore.dicom.header" not in out


def test_pixel_layout_is_still_importable_from_the_header_module() -> None:
    from pacscore.dicom import header, layout

    assert header.PixelLayout is layout.PixelLayout
    assert "PixelLayout" in header.__all__



def _imports(node: ast.AST, package: str) -> Iterator[str]:
    """Modules named by the imports under ``node`` (any depth: function-level too),
    except in ``if TYPE_CHECKING:`` blocks; relative ones resolved from ``package``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        if isinstance(child, ast.Import):
            yield from (a.name for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - child.level + 1]
            prefix = ".".join([*parts, child.module] if child.module else parts) \
                if child.level else child.module or ""
            yield prefix
            yield from (f"{prefix}.{a.name}" for a in child.names)
        yield from _imports(child, package)


def _import_graph() -> dict[str, set[str]]:
    """pacscore module -> the pacscore modules it imports (a module's own parent
    packages left out: Python imports those first, that is no cycle)."""
    root = Path(pacscore.__file__).parent
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts)
             .removesuffix(".__init__"): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for imported in _imports(ast.parse(path.read_text()), package):
            name = imported
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
        graph[module] = found
    return graph


def test_no_import_cycle_even_through_function_level_imports() -> None:
    """Issue 15.4: ingest.pool -> jobs.engine -> ingest.workers -> ingest.pool was a
    cycle hidden in function-level imports; no module reaches itself again."""
    graph = _import_graph()
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
    assert cycles == []
