"""``pacscore migrate`` (issue 17.5) between an embedded folder and the scaled archive
(a real PostgreSQL 15 index, a real SeaweedFS S3 store): byte-identical round trip,
resume after kill -9, a damaged source frame reported and not copied, a target that
holds some instances already."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

from pacscore import Archive, ArchiveConfig
from pacscore.cli import main
from pacscore.errors import ArchiveStorageError
from pacscore.gc import collect_garbage
from pacscore.index import StoreKind
from pacscore.index.spec import IndexSpec
from pacscore.jobs.migrate import Endpoint
from pacscore.store import StoreSpec
from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: F401
from pacscore.testing.s3 import FaultProxy, SeaweedS3

_CONFIG = ArchiveConfig(prepare_workers=0, fsync=False)
_MIX = ("ct_series/dcmqi_ge_ct_3slice/01.dcm", "ct_series/dcmqi_ge_ct_3slice/02.dcm",
        "ct_series/dcmqi_ge_ct_3slice/03.dcm", "multiframe/enhanced_ct",
        "multiframe/us_cine/HP_echo_34fr_jpeg.dcm", "other/pdf")
"""Frames (HTJ2K single and multi-frame) and objects kept as received (lossy JPEG, an
encapsulated PDF)."""


def _files(corpus: Path, names: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for name in names:
        p = corpus / name
        out += sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    return out


def _embedded(root: Path, files: list[Path]) -> list[str]:
    with Archive(root, _CONFIG) as a:
        return [a.store(f).sop_instance_uid for f in files]


def _originals(where: list[str], sops: list[str]) -> dict[str, str]:
    """SHA-256 of ``export --transfer-syntax original`` of every instance."""
    end = Endpoint.parse(where)
    with tempfile.TemporaryDirectory() as temp, \
            Archive(end.folder or temp, _CONFIG, store=end.store, index=end.index) as a:
        return {s: hashlib.sha256(a.get(s, "original")).hexdigest() for s in sops}


def _migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["migrate", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture()
def url(seaweedfs: SeaweedS3) -> str:
    return seaweedfs.url(f"migrate/{uuid.uuid4().hex}")


def test_round_trip_embedded_scaled_embedded_is_byte_identical(
        tmp_path: Path, corpus: Path, url: str, postgres_dsn: str,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    files = _files(corpus, _MIX)
    sops = _embedded(tmp_path / "a", files)
    with Archive(tmp_path / "a", _CONFIG, readonly=True) as a:
        kinds = {a.record(s).kind for s in sops}
    assert kinds == {StoreKind.FRAMES, StoreKind.BLOB}
    before = _tree(tmp_path / "a")
    code, report = _migrate(capsys, "--from", str(tmp_path / "a"), "--to", postgres_dsn, url)
    assert code == 0, report
    assert (report["instances"], report["copied"], report["mismatches"]) == (len(sops),
                                                                             len(sops), [])
    assert _tree(tmp_path / "a") == before  # the source is never written
    code, back = _migrate(capsys, "--from", url, postgres_dsn, "--to", str(tmp_path / "c"))
    assert code == 0 and back["copied"] == len(sops) and back["mismatches"] == []
    original = {s: hashlib.sha256(f.read_bytes()).hexdigest()
                for s, f in zip(sops, files, strict=True)}
    assert _originals([postgres_dsn, url], sops) == original
    for folder in ("a", "c"):  # `pacscore export --transfer-syntax original`
        out = tmp_path / f"export-{folder}"
        assert main(["export", *sops, "--archive", str(tmp_path / folder), "--out",
                     str(out), "--transfer-syntax", "original"]) == 0
        capsys.readouterr()
        assert {s: hashlib.sha256((out / f"{s}.dcm").read_bytes()).hexdigest()
                for s in sops} == original
    with Archive(tmp_path / "c", _CONFIG) as c:
        assert c.verify().failed == []
        assert c.stats()["instances"] == len(sops)
    # again: nothing copied twice, everything verified again
    code, again = _migrate(capsys, "--from", str(tmp_path / "a"), "--to", postgres_dsn, url)
    assert code == 0 and (again["copied"], again["present"]) == (0, len(sops))
    assert IndexSpec.parse(postgres_dsn).open(readonly=True).stats()["instances"] == len(sops)


def test_damaged_source_frame_is_reported_and_not_copied(
        tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _files(corpus, _MIX[:3])
    sops = _embedded(tmp_path / "a", files)
    with Archive(tmp_path / "a", _CONFIG, readonly=True) as a:
        loc = a.record(sops[1]).location
    chunks = [p for p in (tmp_path / "a/frames").rglob("*") if p.is_file()
              and loc in p.parts and p.name != "zarr.json"]
    assert chunks
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the codestream
    chunks[0].write_bytes(bytes(data))
    code, report = _migrate(capsys, "--from", str(tmp_path / "a"), "--to",
                            str(tmp_path / "b"))
    assert code == 1
    assert [m["uid"] for m in report["mismatches"]] == [sops[1]]
    assert "source damaged, not copied" in report["mismatches"][0]["reason"]
    assert report["copied"] == 2
    with Archive(tmp_path / "b", _CONFIG, readonly=True) as b:
        assert sorted(b.index.instances("series", b.record(sops[0]).series_uid)) == \
            sorted([sops[0], sops[2]])
        assert b.index.get(sops[1]) is None


def test_target_holding_some_instances(tmp_path: Path, corpus: Path, url: str,
                                       postgres_dsn: str,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    files = _files(corpus, _MIX)
    sops = _embedded(tmp_path / "a", files)
    # the target stored two of them itself (through its own import: other locations)
    with Archive(tmp_path / "fe", _CONFIG, store=StoreSpec.from_url(url),
                 index=postgres_dsn) as t:
        for f in files[:2]:
            t.store(f)
    code, report = _migrate(capsys, "--from", str(tmp_path / "a"), "--to", postgres_dsn, url)
    assert code == 0, report
    assert (report["copied"], report["present"]) == (len(sops) - 2, 2)
    assert _originals([postgres_dsn, url], sops) == _originals([str(tmp_path / "a")], sops)
    # a UID the target holds with other content is a mismatch, never overwritten
    other = tmp_path / "b"
    with Archive(other, _CONFIG) as b:
        b.store(files[0])
    data = bytearray(files[1].read_bytes())
    data[-1] ^= 0x01  # the pixel data's last byte: same UIDs, other content
    with Archive(tmp_path / "d", _CONFIG) as d:
        changed = d.store(bytes(data)).sop_instance_uid
    assert changed == sops[1]
    code, report = _migrate(capsys, "--from", str(tmp_path / "d"), "--to", str(other))
    assert code == 0 and report["copied"] == 1
    code, report = _migrate(capsys, "--from", str(tmp_path / "a"), "--to", str(other))
    assert code == 1
    assert [m["uid"] for m in report["mismatches"]] == [sops[1]]
    assert "other content" in report["mismatches"][0]["reason"]
    with Archive(other, _CONFIG, readonly=True) as b:
        assert b.record(sops[1]).sha256 != hashlib.sha256(files[1].read_bytes()).hexdigest()


def test_resume_after_kill_9(tmp_path: Path, corpus: Path, seaweedfs: SeaweedS3,
                             postgres_dsn: str) -> None:  # noqa: F811
    files = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    sops = _embedded(tmp_path / "a", files)
    prefix = f"migrate/{uuid.uuid4().hex}"
    index = IndexSpec.parse(postgres_dsn)

    def count() -> int:
        try:
            idx = index.open(readonly=True)
        except ArchiveStorageError:  # the schema is not there yet
            return 0
        try:
            return int(idx.stats()["instances"])
        finally:
            idx.close()

    with FaultProxy(seaweedfs.endpoint) as proxy:
        proxy.fail("PUT", "", status=0, delay=0.05)  # every PUT late: a slow store
        url = f"s3://{seaweedfs.bucket}/{prefix}?endpoint={proxy.endpoint}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pacscore.cli", "migrate", "--from",
               str(tmp_path / "a"), "--to", postgres_dsn, url, "--batch", "2", "--json"]
        run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while count() < 4 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.communicate()
        done = count()
        assert 4 <= done < len(sops), "killed too late: the migration had finished"
        proxy.heal()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                               check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout.strip().splitlines()[-1])
    assert report["present"] == done and report["copied"] == len(sops) - done
    assert report["mismatches"] == []
    assert count() == len(sops)  # nothing twice, nothing lost
    url = seaweedfs.url(prefix)
    assert _originals([postgres_dsn, url], sops) == _originals([str(tmp_path / "a")], sops)
    # what the killed run had staged and not committed is only an orphan for gc
    with Archive(tmp_path / "fe", _CONFIG, store=StoreSpec.from_url(url),
                 index=postgres_dsn) as t:
        gc = collect_garbage(t.index, t.store_, grace=timedelta(0))
        assert all(t.index.location_owner(loc) is None for loc in gc.removed)
        owned = {t.record(s).location for s in sops}
        # (a location committed just before the kill may still carry its staging
        # marker: readable, and published by a start-up recovery after the grace period)
        assert {item.location for item in t.store_.inventory()} == owned


def test_batches_are_bounded_by_bytes(tmp_path: Path, corpus: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import pacscore.jobs.migrate as job
    from pacscore.commit import Committer

    sops = _embedded(tmp_path / "a", _files(corpus, _MIX[:3]))
    sizes: list[int] = []
    commit = Committer.commit

    def counted(self: Committer, batch: list) -> list:  # type: ignore[type-arg]
        sizes.append(len(batch))
        return commit(self, batch)

    monkeypatch.setattr(Committer, "commit", counted)
    monkeypatch.setattr(job, "BATCH_BYTES", 1)  # every instance is over it
    report = job.migrate(Endpoint.parse([str(tmp_path / "a")]),
                         Endpoint.parse([str(tmp_path / "b")]))
    assert report.copied == len(sops) and sizes == [1, 1, 1]


def test_endpoints_are_checked(tmp_path: Path, url: str) -> None:
    from pacscore.errors import InvalidRequestError
    from pacscore.jobs.migrate import migrate

    with pytest.raises(InvalidRequestError, match="needs both its index and its store"):
        Endpoint.parse([url])
    with pytest.raises(InvalidRequestError, match="two folders"):
        Endpoint.parse([str(tmp_path / "a"), str(tmp_path / "b")])
    assert Endpoint.parse(["host=db port=5432 dbname=pacs", url]).index is not None
    (tmp_path / "a").mkdir()
    with pytest.raises(InvalidRequestError, match="share a folder"):
        migrate(Endpoint.parse([str(tmp_path / "a")]),
                Endpoint.parse([str(tmp_path / "a") + "/."]))
    assert not any((tmp_path / "a").iterdir())  # nothing was opened


def test_parts_share_a_migration(tmp_path: Path, corpus: Path, url: str,
                                 postgres_dsn: str,  # noqa: F811
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pacscore.jobs.migrate import in_part

    files = _files(corpus, _MIX)
    sops = _embedded(tmp_path / "a", files)
    mine = [sum(in_part(s, (i, 2)) for s in sops) for i in (1, 2)]
    assert sum(mine) == len(sops) and all(mine)  # disjoint, and both hold some
    # two processes at once, each its part, into one PostgreSQL + S3 archive
    runs = [subprocess.Popen([sys.executable, "-m", "pacscore.cli", "migrate", "--from",
                              str(tmp_path / "a"), "--to", postgres_dsn, url, "--part",
                              f"{i}/2", "--json"], stdout=subprocess.PIPE, text=True)
            for i in (1, 2)]
    copied = []
    for run in runs:
        out, _ = run.communicate(timeout=300)
        report = json.loads(out.strip().splitlines()[-1])
        assert run.returncode == 0 and report["mismatches"] == [] and report["series"] == 0
        copied.append(report["copied"])
    assert copied == mine
    code, whole = _migrate(capsys, "--from", str(tmp_path / "a"), "--to", postgres_dsn, url)
    assert code == 0 and (whole["copied"], whole["present"]) == (0, len(sops))
    assert whole["series"] > 0
    with pytest.raises(SystemExit):
        main(["migrate", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b"),
              "--part", "3/2"])
    assert not (tmp_path / "b").exists()
