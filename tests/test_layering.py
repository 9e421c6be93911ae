"""Codecs and the frame store stand apart from the header parser (issue 15.7d)."""

from __future__ import annotations

import subprocess
import sys
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
