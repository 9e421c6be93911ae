"""The pacscore command as a script would use it: JSON shapes and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run(*args: str) -> tuple[int, Any, str]:
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False)
    try:
        out = json.loads(proc.stdout) if "--json" in args else proc.stdout
    except json.JSONDecodeError:
        out = proc.stdout
    return proc.returncode, out, proc.stderr


@pytest.fixture()
def tree(tmp_path: Path, corpus: Path) -> Path:
    """A folder with a series, a malformed file, a non-DICOM file and a sub-folder."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for p in sorted((corpus / "ct_series/dcmqi_ge_ct_3slice").glob("*.dcm")):
        (root / "sub" / p.name).write_bytes(p.read_bytes())
    (root / "truncated.dcm").write_bytes((corpus / "malformed/MR_truncated.dcm").read_bytes())
    (root / "notes.txt").write_text("not dicom")
    # A data set without preamble whose first byte is stray: taken for something else.
    data = (corpus / "ct_series/single/Philips_CT.dcm").read_bytes()
    (root / "stray.dcm").write_bytes(b"\x00" + data[132:])
    return root


def accounted(out: dict[str, Any]) -> int:
    """Files in some category of an import's JSON: each file in exactly one."""
    return int(out["stored"] + out["duplicates"] + len(out["rejected"]) + len(out["skipped"])
               + len(out["failed"]))


def test_import_json_summary_and_exit_code(tmp_path: Path, tree: Path) -> None:
    code, out, _ = run("import", str(tree), "--archive", str(tmp_path / "a"), "--workers", "2",
                       "--json")
    assert code == 1  # one input rejected
    assert out["instances"] == 3 and out["stored"] == 3 and out["duplicates"] == 0
    assert [r["path"].endswith("truncated.dcm") for r in out["rejected"]] == [True]
    assert "8130" in out["rejected"][0]["reason"]
    assert out["rejected"][0]["error"] == "TruncatedFileError"
    assert out["bytes_stored"] < out["bytes_in"]
    assert set(out) >= {"instances", "stored", "duplicates", "rejected", "bytes_in",
                        "bytes_stored", "seconds"}
    # Every file skipped is listed with its path and the reason.
    skipped = {Path(s["path"]).name: s["reason"] for s in out["skipped"]}
    assert set(skipped) == {"notes.txt", "stray.dcm"}
    assert "no 'DICM' prefix" in skipped["stray.dcm"] and "00 02 00" in skipped["stray.dcm"]
    assert out["failed"] == [] and out["files"] == 6 == accounted(out)
    code, out, _ = run("import", str(tree / "sub"), "--archive", str(tmp_path / "a"), "--json")
    assert code == 0 and out["duplicates"] == 3 and out["stored"] == 0


def test_import_resume_reports_the_whole_job(tmp_path: Path, tree: Path) -> None:
    """--resume of a finished import reports what the first run did, from the journal
    (the rejected file stays rejected: exit 1 again), and does nothing again."""
    archive = str(tmp_path / "a")
    code, first, _ = run("import", str(tree), "--archive", archive, "--json")
    assert code == 1
    code, again, err = run("import", str(tree), "--archive", archive, "--resume", "--json")
    assert code == 1, err
    assert again["resumed"] == again["files"] == first["files"] == 6 == accounted(again)
    for key in ("stored", "duplicates", "rejected", "skipped", "failed", "bytes_in",
                "bytes_stored"):
        assert again[key] == first[key], key
    code, text, _ = run("import", str(tree), "--archive", archive, "--resume")
    assert code == 1 and "6 (6 done by an earlier run)" in text and "truncated.dcm" in text


def test_find_export_verify_stats(tmp_path: Path, tree: Path) -> None:
    archive = str(tmp_path / "a")
    run("import", str(tree / "sub"), "--archive", archive, "--workers", "0")
    code, out, _ = run("find", "--archive", archive, "--level", "instance", "--json")
    assert code == 0 and len(out["matches"]) == 3
    assert all({"SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"} <= set(m)
               for m in out["matches"])
    code, studies, _ = run("find", "--archive", archive, "--level", "study", "Modality=CT",
                           "--json")
    assert code == 0 and len(studies["matches"]) == 1
    assert "StudyInstanceUID" in studies["matches"][0]
    uid = out["matches"][0]["SOPInstanceUID"]
    code, _, _ = run("export", uid, "--archive", archive, "--out", str(tmp_path / "out"))
    exported = (tmp_path / "out" / f"{uid}.dcm").read_bytes()
    assert code == 0 and exported in {p.read_bytes() for p in (tree / "sub").iterdir()}
    code, out, _ = run("verify", "--archive", archive, "--json")
    assert code == 0 and out == {"checked": 3, "failed": []}
    code, out, _ = run("stats", "--archive", archive, "--json")
    assert code == 0 and out["instances"] == 3 and out["compressed_instances"] == 3
    assert out["transfer_syntaxes"] == {"1.2.840.10008.1.2.4.202": 3}


def test_verify_reports_a_corrupted_frame(tmp_path: Path, tree: Path) -> None:
    archive = tmp_path / "a"
    run("import", str(tree / "sub"), "--archive", str(archive), "--workers", "0")
    chunk = next((archive / "frames" / "arrays").glob("*/*/c.0.0.0"))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, out, _ = run("verify", "--archive", str(archive), "--json")
    assert code == 1 and len(out["failed"]) == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    code, _, err = run("import", str(tmp_path / "missing"), "--archive", str(tmp_path / "a"))
    assert code == 2 and "no such file" in err
    code, _, _ = run("find", "--archive", str(tmp_path / "a"), "--level", "bogus")
    assert code == 2
    code, _, err = run("export", "1.2.3", "--archive", str(tmp_path / "a"), "--out",
                       str(tmp_path / "o"))
    assert code == 2 and "does not exist" in err  # a reader never creates an archive
