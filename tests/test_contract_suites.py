"""The contract suites of :mod:`pacscore.testing` can fail, and stay out of the runtime.

A store or index that breaks the contract on purpose is run through the shipped suite
in a separate pytest process: the suite must report exactly the broken behaviours."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

BROKEN_STORE = '''
from pacscore.store import ZarrFrameStore
from pacscore.testing.store import FrameStoreTests


class ForgetfulStore(ZarrFrameStore):
    """Reads frames in index order (not the order asked) and never deletes."""

    def read_frames(self, loc, indices, ndim):
        return super().read_frames(loc, sorted(indices), ndim)

    def delete(self, locs):
        pass


class TestForgetfulStore(FrameStoreTests):
    def store_factory(self, tmp_path):
        return ForgetfulStore(tmp_path / "frames", fsync=False)
'''

BROKEN_INDEX = '''
from pacscore.index import LmdbIndex
from pacscore.testing.index import IndexTests


class PagelessIndex(LmdbIndex):
    """Ignores the offset of a query."""

    def find(self, level, query, *, limit=None, offset=0, fuzzy=False):
        return super().find(level, query, limit=limit, fuzzy=fuzzy)


class TestPagelessIndex(IndexTests):
    def index_factory(self, tmp_path):
        return PagelessIndex(tmp_path / "index.lmdb", map_size=1 << 20, sync=False)
'''


def run_suite(tmp_path: Path, source: str) -> tuple[int, set[str], int]:
    """Run ``source`` as a test module in its own pytest; (exit code, failed test names,
    passed count)."""
    module = tmp_path / "test_broken.py"
    module.write_text(textwrap.dedent(source))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(module), "-q", "-rf", "-p", "no:cacheprovider",
         "-p", "no:benchmark", "--rootdir", str(tmp_path)],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    failed = {m.group(1).split("[")[0]
              for m in re.finditer(r"^FAILED \S+::\w+::(\S+)", proc.stdout, re.M)}
    passed = re.search(r"(\d+) passed", proc.stdout)
    return proc.returncode, failed, int(passed.group(1)) if passed else 0


def test_a_broken_store_fails_the_frame_store_suite(tmp_path: Path) -> None:
    code, failed, passed = run_suite(tmp_path, BROKEN_STORE)
    assert code == 1
    assert failed == {  # frames out of order; deletes that do nothing (nor check ids)
        "test_read_frames_in_requested_order", "test_colour_frames_use_four_dimensions",
        "test_staged_frames_are_listed_only_once_published",
        "test_delete_removes_published_locations", "test_delete_ignores_missing_locations",
        "test_invalid_location_ids_are_rejected"}
    assert passed > 15  # the rest of the contract holds for it


def test_a_broken_index_fails_the_index_suite(tmp_path: Path) -> None:
    code, failed, passed = run_suite(tmp_path, BROKEN_INDEX)
    assert code == 1
    assert failed == {"test_limit_and_offset"}
    assert passed > 30


def test_importing_pacscore_imports_no_pytest() -> None:
    """pytest is a test extra: the package and its helpers for services load without it
    (only pacscore.testing.store / .index need it)."""
    code = ("import sys, pacscore, pacscore.testing, pacscore.store, pacscore.index; "
            "assert 'pytest' not in sys.modules, 'pytest imported'; "
            "import pacscore.testing.store, pacscore.testing.index; "
            "assert 'pytest' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
