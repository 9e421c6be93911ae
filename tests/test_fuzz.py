"""The standing fuzz campaign (``tests/fuzz_campaign.py``), bounded for CI.

A fixed seed and a fixed number of inputs per target, so a failure reproduces;
``PACSCORE_FUZZ_SECONDS=N`` (and ``PACSCORE_FUZZ_SEED``) turns each target into a
campaign of N seconds (the nightly-style mode; also ``python -m tests.fuzz_campaign``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fuzz_campaign import Campaign, fuzz_archive, fuzz_multipart, fuzz_parser

_SEED = int(os.environ.get("PACSCORE_FUZZ_SEED", "20261203"))
_SECONDS = float(os.environ.get("PACSCORE_FUZZ_SECONDS", "0")) or None


def _clean(run: Campaign) -> None:
    assert run.tried > 0
    assert run.crashed == run.hung == run.lost == 0, "\n".join(
        json.dumps(f) for f in run.findings[:10])
    assert run.refused + run.stored == run.tried  # every input accounted for


def test_parser_takes_only_documented_errors(corpus: Path) -> None:
    run = fuzz_parser(corpus, seed=_SEED, count=None if _SECONDS else 1500, seconds=_SECONDS)
    _clean(run)
    assert run.refused > run.tried // 4  # the mutations do break most objects


def test_archive_stores_or_refuses_and_loses_nothing(corpus: Path, tmp_path: Path) -> None:
    run = fuzz_archive(corpus, tmp_path / "archive", seed=_SEED,
                       count=None if _SECONDS else 200, seconds=_SECONDS)
    _clean(run)
    assert run.stored > 0  # some mutants are still valid objects: stored, read back


def test_multipart_parser_takes_only_its_errors() -> None:
    run = fuzz_multipart(seed=_SEED, count=int(_SECONDS * 200) if _SECONDS else 3000)
    _clean(run)


@pytest.mark.parametrize("mutator", ["deep", "bomb"])
def test_mutators_make_what_they_say(corpus: Path, mutator: str) -> None:
    """The campaign's hostile generators are refused for the reason they stand for."""
    import random

    from pacscore.config import Limits
    from pacscore.dicom.scan import scan
    from pacscore.errors import LimitExceededError, PacsError
    from tests.fuzz_campaign import MUTATORS

    rng = random.Random(_SEED)
    refused = 0
    for _ in range(6):
        data = MUTATORS[mutator](rng, b"", [])
        try:
            scan(data, Limits(), mutator)
        except LimitExceededError:
            refused += 1
        except PacsError:
            pass
    assert refused > 0
