"""Differential test of the Modality Worklist SCP against DCMTK's wlmscpfs (issue 16.2).

The same items (DCMTK's example worklist, ``wlistdb/OFFIS/wklist*.dump`` through
dump2dcm) go into wlmscpfs (its file database) and into pacscore (``Archive.worklist``);
DCMTK's ``findscu -W`` sends the same queries (DCMTK's ``wlistqry*.dump`` and ours) to
both, writes every answer to a file (``-X``), and the answers are compared attribute by
attribute, as sets of answers.

wlmscpfs runs with ``-csk`` (return the Specific Character Set of the item: PS3.4
C.4.1.1.3.2 asks for it when the answer is not in the default repertoire; its default
drops it) and ``-dfr`` (keep items its own completeness check refuses).  One
difference is a choice DCMTK makes that the standard allows, normalised below:

* an empty sequence key (no item, or one empty item) asks for the whole sequence
  (PS3.4 C.2.2.2.6): DCMTK answers with the attributes *it* supports in that
  sequence, zero-length where the item has none (SPS End Date/Time, SPS Status);
  pacscore with what the item holds.  Zero-length attributes inside a sequence that
  the query asked for empty are dropped before comparing.
* a requested sequence the item does not have: pacscore returns it zero-length (no
  item), as C.4.1.1.3.1 says of absent return keys; DCMTK leaves it out.  A sequence
  with no item is compared as absent.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacscore import Archive
from pacscore.config import ArchiveConfig
from pacscore.services.auth.security import AeRegistry
from pacscore.services.dimse.server import DimseServer
from pacscore.testing import free_port
from pacscore.workflow import read_item

EXAMPLES = Path("/usr/share/doc/dcmtk/examples")
BIN = Path("/usr/bin")
pytestmark = pytest.mark.skipif(not (BIN / "wlmscpfs").exists() or
                                not (EXAMPLES / "wlistdb" / "OFFIS").is_dir(),
                                reason="DCMTK with its examples not installed")

# Our queries: -k keys of findscu (station AE, modality, date range, name wildcard,
# accession number, combined date-time range, multi-valued station).
OWN = {
    "station": ["0040,0100[0].ScheduledStationAETitle=AA32", "PatientName", "AccessionNumber"],
    "station2": ["0040,0100[0].ScheduledStationAETitle=NN77", "PatientID",
                 "0040,0100[0].Modality"],
    "modality": ["0040,0100[0].Modality=CT", "PatientName", "AccessionNumber",
                 "0040,0100[0].ScheduledStationAETitle"],
    "dates": ["0040,0100[0].ScheduledProcedureStepStartDate=19960101-19960501",
              "PatientName", "AccessionNumber"],
    "open_date": ["0040,0100[0].ScheduledProcedureStepStartDate=-19951231",
                  "AccessionNumber"],
    "name": ["PatientName=HAYDN*", "PatientID", "AccessionNumber",
             "0040,0100[0].ScheduledProcedureStepStartDate"],
    "name_q": ["PatientName=?OZART*", "AccessionNumber"],
    "accession": ["AccessionNumber=00007", "PatientName", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "RequestedProcedureID",
                  "0040,0100[0].ScheduledProcedureStepID"],
    "time": ["0040,0100[0].ScheduledProcedureStepStartTime=120000-180000",
             "AccessionNumber", "0040,0100[0].ScheduledProcedureStepStartDate"],
    "absent_key": ["PatientWeight", "AccessionNumber=00001"],
}


def dump2dcm(dump: Path, out: Path) -> None:
    subprocess.run([str(BIN / "dump2dcm"), "-q", str(dump), str(out)], check=True)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("mwl")
    db = root / "wlistdb" / "OFFIS"
    db.mkdir(parents=True)
    (db / "lockfile").touch()
    for dump in sorted((EXAMPLES / "wlistdb" / "OFFIS").glob("wklist*.dump")):
        dump2dcm(dump, db / f"{dump.stem}.wl")
    queries = root / "queries"
    queries.mkdir()
    for dump in sorted((EXAMPLES / "wlistqry").glob("wlistqry*.dump")):
        dump2dcm(dump, queries / f"{dump.stem}.dcm")
    archive = Archive(root / "archive", ArchiveConfig(fsync=False))
    for f in sorted(db.glob("*.wl")):
        archive.worklist.add(read_item(f))
    AeRegistry(archive.root).add("FINDSCU", "127.0.0.1")
    server = DimseServer(archive, ae_title="OFFIS")
    ours = free_port()
    server.start("127.0.0.1", ours)
    theirs = free_port()
    wlm = subprocess.Popen([str(BIN / "wlmscpfs"), "-q", "-dfp", str(root / "wlistdb"), "-dfr",
                            "-csk", "-s", str(theirs)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run([str(BIN / "echoscu"), "-aec", "OFFIS", "127.0.0.1",
                               str(theirs)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.05)
        yield {"root": root, "queries": queries, "ours": ours, "theirs": theirs}
    finally:
        wlm.terminate()
        wlm.wait(10)
        server.stop()
        archive.close()


def findscu(port: int, out: Path, query: Path | None, keys: list[str]) -> list[Dataset]:
    out.mkdir(parents=True)
    args = [str(BIN / "findscu"), "-W", "-X", "-od", str(out), "-aec", "OFFIS",
            "127.0.0.1", str(port)]
    for k in keys:
        args += ["-k", k]
    if query is not None:
        args.append(str(query))
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]


def _empty_sequences(query: Dataset) -> set[int]:
    """Sequence keys with no item or one empty item: both ask for the whole sequence."""
    return {e.tag for e in query if e.VR == "SQ" and all(len(i) == 0 for i in e.value)}


def canonical(ds: Dataset, expand: set[int] = frozenset(), inside: bool = False) -> Any:  # type: ignore[assignment]
    """An answer as a sorted tuple of (tag, VR, value); sequences recursively."""
    out = []
    for e in ds:
        if e.tag.group == 0x0002:
            continue
        if e.VR == "SQ":
            items = tuple(canonical(i, inside=inside or e.tag in expand) for i in e.value)
            if items:  # DCMTK leaves out a requested sequence the item has not
                out.append((int(e.tag), "SQ", tuple(sorted(items))))
            continue
        value = "\\".join(str(v) for v in e.value) if isinstance(e.value, MultiValue) \
            else "" if e.value is None else str(e.value)
        if inside and value.strip() == "":
            continue  # DCMTK's expansion of an empty sequence key (module docstring)
        out.append((int(e.tag), e.VR, value.strip()))
    return tuple(sorted(out))


def compare(peers: dict[str, Any], name: str, query: Path | None, keys: list[str]) -> int:
    expand = _empty_sequences(pydicom.dcmread(query)) if query is not None else set()
    base = peers["root"] / "answers" / name
    ours = findscu(peers["ours"], base / "pacscore", query, keys)
    theirs = findscu(peers["theirs"], base / "dcmtk", query, keys)
    a = sorted(canonical(d, expand) for d in ours)
    b = sorted(canonical(d, expand) for d in theirs)
    only_ours = [x for x in a if x not in b]
    only_theirs = [x for x in b if x not in a]
    assert a == b, f"{name}: only pacscore {only_ours}\nonly wlmscpfs {only_theirs}"
    return len(a)


QUERY_FILES = sorted((EXAMPLES / "wlistqry").glob("wlistqry*.dump"))


@pytest.mark.parametrize("dump", QUERY_FILES, ids=[d.stem for d in QUERY_FILES])
def test_dcmtk_example_queries(peers: dict[str, Any], dump: Path) -> None:
    compare(peers, dump.stem, peers["queries"] / f"{dump.stem}.dcm", [])


@pytest.mark.parametrize("name", sorted(OWN))
def test_own_queries(peers: dict[str, Any], name: str) -> None:
    n = compare(peers, name, None, OWN[name])
    if name != "absent_key":
        assert n > 0 or name in {"time"}, "a query that matches nothing proves little"


def test_answers_at_all(peers: dict[str, Any]) -> None:
    """The comparison is not vacuous: the universal query lists all ten items."""
    assert compare(peers, "all", None, ["AccessionNumber", "PatientName"]) == 10
    assert os.path.isdir(peers["root"] / "answers" / "all" / "dcmtk")
