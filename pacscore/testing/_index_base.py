"""Shared part of :mod:`pacscore.testing.index`: sample records and the fixtures.

Needs pytest (the ``test`` extra); the package never imports this module itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..index import Index, InstanceRecord, StoreKind

__all__ = ["CT_CLASS", "EXPLICIT", "HTJ2K", "MR_CLASS", "IndexFixtures", "header_of", "make",
           "put", "uids"]

HTJ2K = "1.2.840.10008.1.2.4.202"
EXPLICIT = "1.2.840.10008.1.2.1"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
_counter = iter(range(1, 1 << 30))


def make(sop: str, *, study: str = "1.2.1", series: str = "1.2.1.1", patient: str | None = "P1",
         name: str = "Doe^Jane", date: str = "20200115", modality: str = "CT",
         accession: str = "A100", content: str = "", kind: StoreKind = StoreKind.FRAMES,
         sop_class: str = CT_CLASS, bytes_in: int | None = None,
         bytes_stored: int | None = None, **extra: Any) -> InstanceRecord:
    """A plausible InstanceRecord; ``content`` changes the SHA-256."""
    n = next(_counter)
    attrs: dict[str, Any] = {
        "PatientID": patient, "PatientName": name, "PatientBirthDate": "19700101",
        "PatientSex": "F", "StudyInstanceUID": study, "StudyDate": date,
        "StudyTime": "101500", "AccessionNumber": accession, "StudyDescription": "CHEST",
        "ReferringPhysicianName": "Who^Doctor", "StudyID": "1",
        "SeriesInstanceUID": series, "Modality": modality, "SeriesNumber": 1,
        "SeriesDescription": "AX", "SeriesDate": date, "SOPInstanceUID": sop,
        "SOPClassUID": sop_class, "InstanceNumber": n, "NumberOfFrames": None,
    }
    attrs.update(extra)
    frames = kind == StoreKind.FRAMES
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=sop_class, study_uid=study, series_uid=series,
        attributes=attrs, original_syntax=EXPLICIT,
        stored_syntax=HTJ2K if frames else EXPLICIT, kind=kind,
        location=hashlib.md5(f"{sop}/{content}/{n}".encode()).hexdigest(),
        sha256=hashlib.sha256(f"{sop}/{content}".encode()).hexdigest(),
        bytes_in=bytes_in if bytes_in is not None else 1000 + n,
        bytes_stored=bytes_stored if bytes_stored is not None else 300 + n,
        layout={"rows": 2, "columns": 2, "samples": 1, "bits_allocated": 16,
                "bits_stored": 12, "signed": False, "planar": False,
                "photometric": "MONOCHROME2", "frames": 1} if frames else None,
        frame_crc32=(n,) if frames else (), kept_reason=None if frames else "kept",
        warnings=("w",) if n % 2 else (),
    )


def header_of(rec: InstanceRecord) -> bytes:
    return b"" if rec.kind == StoreKind.BLOB else b"HDR\x00" + rec.sop_instance_uid.encode()


def put(index: Index, *recs: InstanceRecord) -> list[str]:
    return [o.status for o in index.put([(r, header_of(r)) for r in recs])]


def uids(rows: list[dict[str, Any]], key: str) -> list[str]:
    return [r[key] for r in rows]




class IndexFixtures:
    """The ``index`` fixture (built by :meth:`index_factory`) and ``populated``."""

    def index_factory(self, tmp_path: Path) -> Index:
        """A fresh, empty index kept under ``tmp_path``: every implementation overrides
        this (or the ``index`` fixture itself)."""
        raise NotImplementedError(f"{type(self).__name__} must override index_factory")

    @pytest.fixture
    def index(self, tmp_path: Path) -> Iterator[Index]:
        """A fresh, empty index from :meth:`index_factory`, closed afterwards."""
        index = self.index_factory(tmp_path)
        try:
            yield index
        finally:
            index.close()


    @pytest.fixture
    def populated(self, index: Index) -> Index:
        """Two patients, three studies, five series, nine instances."""
        recs = [
            make("1.9.1", study="1.2.1", series="1.2.1.1", patient="P1", name="Doe^Jane",
                 date="20200101", modality="CT", accession="A.100"),
            make("1.9.2", study="1.2.1", series="1.2.1.1", patient="P1", name="Doe^Jane",
                 date="20200101", modality="CT", accession="A.100"),
            make("1.9.3", study="1.2.1", series="1.2.1.2", patient="P1", name="Doe^Jane",
                 date="20200101", modality="PR", accession="A.100", kind=StoreKind.BLOB,
                 sop_class=MR_CLASS),
            make("1.9.4", study="1.2.2", series="1.2.2.1", patient="P1", name="Doe^Jane",
                 date="20200131", modality="MR", accession="AX100", sop_class=MR_CLASS),
            make("1.9.5", study="1.2.2", series="1.2.2.1", patient="P1", name="Doe^Jane",
                 date="20200131", modality="MR", accession="AX100", sop_class=MR_CLASS),
            make("1.9.6", study="1.2.3", series="1.2.3.1", patient="P2", name="smith^john",
                 date="20200201", modality="CT", accession="B7"),
            make("1.9.7", study="1.2.3", series="1.2.3.1", patient="P2", name="smith^john",
                 date="20200201", modality="CT", accession="B7"),
            make("1.9.8", study="1.2.3", series="1.2.3.1", patient="P2", name="smith^john",
                 date="20200201", modality="CT", accession="B7"),
            make("1.9.9", study="1.2.3", series="1.2.3.2", patient="P2", name="smith^john",
                 date="20200201", modality="MR", accession="B7", sop_class=MR_CLASS),
        ]
        assert put(index, *recs) == ["stored"] * 9
        return index
