"""Archive behaviour a user sees: idempotence, conflicts, queries, deletes, syntaxes."""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacscore import Archive, ArchiveConfig, ConflictError, NotFoundError


def _pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data)).pixel_array


@pytest.fixture()
def ct_series(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:6]


def test_restore_is_idempotent(archive: Archive, ct_series: list[Path]) -> None:
    first = archive.store(ct_series[0])
    again = archive.store(ct_series[0].read_bytes())
    assert (first.status, again.status) == ("stored", "duplicate")
    assert archive.stats()["instances"] == 1
    assert len(list(archive.store_.locations())) == 1


def test_same_uid_other_content_is_refused_atomically(archive: Archive,
                                                      ct_series: list[Path]) -> None:
    data = ct_series[0].read_bytes()
    result = archive.store(data)
    tampered = bytearray(data)
    tampered[-2] ^= 0x01  # one pixel bit
    with pytest.raises(ConflictError, match="already stored with different content"):
        archive.store(bytes(tampered))
    assert archive.get(result.sop_instance_uid) == data
    assert archive.stats()["instances"] == 1
    assert list(archive.store_.staging.iterdir()) == []


def test_find_levels_and_matching(archive: Archive, ct_series: list[Path]) -> None:
    results = [archive.store(p) for p in ct_series]
    study = results[0].study_uid
    ds = pydicom.dcmread(ct_series[0], stop_before_pixels=True)
    studies = archive.find("study", PatientID=str(ds.PatientID))
    assert [s["StudyInstanceUID"] for s in studies] == [study]
    assert studies[0]["NumberOfStudyRelatedInstances"] == len(ct_series)
    assert studies[0]["ModalitiesInStudy"] == "CT"
    name = str(ds.PatientName)
    assert archive.find("study", PatientName=name.lower()[:3] + "*")
    assert archive.find("study", PatientName="NO_SUCH*") == []
    date = str(ds.StudyDate)
    assert archive.find("study", StudyDate=f"{date}-")
    assert archive.find("study", StudyDate=f"-{int(date) - 1}") == []
    instances = archive.find("instance", SeriesInstanceUID=results[0].series_uid)
    assert {i["SOPInstanceUID"] for i in instances} == {r.sop_instance_uid for r in results}
    pair = "\\".join(r.sop_instance_uid for r in results[:2])
    assert len(archive.find("instance", SOPInstanceUID=pair)) == 2
    assert len(archive.find("instance", StudyInstanceUID=study, limit=2, offset=1)) == 2


def test_delete_series_removes_frames_and_counts(archive: Archive,
                                                 ct_series: list[Path]) -> None:
    results = [archive.store(p) for p in ct_series]
    assert archive.delete("series", results[0].series_uid) == len(ct_series)
    assert archive.find("study") == []
    assert archive.stats()["instances"] == 0
    assert list(archive.store_.locations()) == []
    with pytest.raises(NotFoundError):
        archive.get(results[0].sop_instance_uid)
    with pytest.raises(KeyError):  # NotFoundError is also a KeyError
        archive.delete("study", results[0].study_uid)


@pytest.mark.parametrize("target", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                                    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1",
                                    "1.2.840.10008.1.2"])
def test_get_in_other_syntaxes_keeps_pixels(archive: Archive, ct_series: list[Path],
                                            target: str) -> None:
    result = archive.store(ct_series[0])
    out = archive.get(result.sop_instance_uid, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom.dcmread(io.BytesIO(out)).file_meta.TransferSyntaxUID == target
    assert np.array_equal(_pixels(out), _pixels(ct_series[0].read_bytes()))


def test_frames_in_stored_syntax_are_the_zarr_chunks(archive: Archive,
                                                     ct_series: list[Path]) -> None:
    import zarr

    result = archive.store(ct_series[0])
    (stream,) = archive.frames(result.sop_instance_uid, [0])
    rec = archive.index.get(result.sop_instance_uid)
    assert rec is not None
    path = archive.store_.array_path(rec.location)
    assert (path / "c.0.0.0").read_bytes() == stream
    arr = zarr.open(str(path), mode="r")
    assert np.array_equal(arr[0], _pixels(ct_series[0].read_bytes()))
    (native,) = archive.frames(result.sop_instance_uid, [0], transfer_syntax="native")
    assert native == np.ascontiguousarray(arr[0]).astype("<i2" if arr.dtype.kind == "i"
                                                          else "<u2").tobytes()
    with pytest.raises(NotFoundError):
        archive.frames(result.sop_instance_uid, [1])


def test_a_round_trip_that_differs_keeps_the_original(
        archive: Archive, ct_series: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A codec whose decoder returns one wrong bit (a codec bug): the object is stored
    as received, and the codestreams already staged (and being flushed) are removed."""
    from pacscore.codecs import by_name

    codec_class = type(by_name("htj2k"))
    decode = codec_class.decode

    def one_bit_off(self: object, data: bytes, layout: object) -> np.ndarray:
        out = decode(self, data, layout).copy()  # type: ignore[arg-type]
        out.flat[12345] ^= 1
        return out

    monkeypatch.setattr(codec_class, "decode", one_bit_off)
    data = ct_series[0].read_bytes()
    result = archive.store(data)
    monkeypatch.undo()
    assert not result.verified and "round trip differs" in (result.kept_reason or "")
    assert result.stored_syntax == pydicom.dcmread(ct_series[0]).file_meta.TransferSyntaxUID
    assert archive.get(result.sop_instance_uid) == data
    assert list(archive.store_.staging.iterdir()) == []
    assert len(list(archive.store_.locations())) == 1


def test_a_failed_flush_stores_nothing(archive: Archive, ct_series: list[Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk refuses the flush of the staged codestreams (made while they are
    verified): the store fails naming the reason, nothing is indexed or left staged."""
    from pacscore.errors import ArchiveStorageError

    def refused(self: object, loc: str) -> None:
        raise ArchiveStorageError("flushing staged frames failed: [Errno 5] I/O error")

    monkeypatch.setattr(type(archive.store_), "make_durable", refused)
    with pytest.raises(ArchiveStorageError, match="I/O error"):
        archive.store(ct_series[0].read_bytes())
    monkeypatch.undo()
    assert archive.stats()["instances"] == 0
    assert list(archive.store_.staging.iterdir()) == []
    assert archive.store(ct_series[0].read_bytes()).status == "stored"


@pytest.mark.parametrize("codec", ["jpegls", "j2k", "rle"])
def test_other_codecs_roundtrip(tmp_path: Path, ct_series: list[Path], codec: str) -> None:
    with Archive(tmp_path / codec, ArchiveConfig(codec=codec)) as archive:
        result = archive.store(ct_series[1])
        assert result.verified and result.kept_reason is None
        assert archive.get(result.sop_instance_uid) == ct_series[1].read_bytes()
        stored = archive.get(result.sop_instance_uid, "stored")
        assert np.array_equal(_pixels(stored), _pixels(ct_series[1].read_bytes()))


def test_transcode_compressed_input_when_asked(tmp_path: Path, corpus: Path) -> None:
    src = corpus / "odd/ts_ladder_mr/7.dcm"  # JPEG-LS lossless
    with Archive(tmp_path / "t", ArchiveConfig(transcode_compressed=True)) as archive:
        result = archive.store(src)
        assert result.stored_syntax == "1.2.840.10008.1.2.4.202" and result.verified
        original = archive.get(result.sop_instance_uid)
        assert np.array_equal(_pixels(original), _pixels(src.read_bytes()))


@pytest.mark.skipif(shutil.which("dcmdjpls") is None, reason="DCMTK dcmdjpls not installed")
def test_jpegls_output_decodes_with_dcmtk(tmp_path: Path, corpus: Path) -> None:
    """A third-party decoder (DCMTK) reads our JPEG-LS at Bits Stored precision."""
    files = [corpus / "ct_series/single/Philips_CT.dcm",       # 12-bit unsigned
             corpus / "ct_series/single/GE_lung_signed.dcm"]   # 16-bit signed
    with Archive(tmp_path / "ls", ArchiveConfig(codec="jpegls")) as archive:
        for src in files:
            result = archive.store(src)
            encoded, decoded = tmp_path / "in.dcm", tmp_path / "out.dcm"
            encoded.write_bytes(archive.get(result.sop_instance_uid, "stored"))
            subprocess.run(["dcmdjpls", str(encoded), str(decoded)], check=True,
                           capture_output=True)
            assert np.array_equal(_pixels(decoded.read_bytes()), _pixels(src.read_bytes()))


def test_store_from_stream_and_reopen(tmp_path: Path, ct_series: list[Path]) -> None:
    with Archive(tmp_path / "s") as archive, ct_series[2].open("rb") as f:
        result = archive.store(f)
    with Archive(tmp_path / "s") as reopened:
        assert reopened.get(result.sop_instance_uid) == ct_series[2].read_bytes()
        assert reopened.recovered == 0


def test_executable_preamble_is_flagged_and_zeroed(archive: Archive, ct_series: list[Path]) -> None:
    data = bytearray(ct_series[3].read_bytes())
    data[:2] = b"MZ"  # a DICOM/PE polyglot (RELIABILITY 2)
    result = archive.store(bytes(data))
    assert any("SECURITY" in w for w in result.warnings)
    assert archive.get(result.sop_instance_uid) == bytes(data)  # original stays exact
    assert archive.get(result.sop_instance_uid, "stored")[:128] == b"\x00" * 128


@pytest.mark.parametrize("uid", ["1.2.3\n", "1.2/3", "../1.2", "1.2..3", "1" * 65, "1.2\x00"])
def test_hostile_uids_are_refused(uid: str) -> None:
    from pacscore.dicom.header import validate_uid
    from pacscore.errors import InvalidUIDError

    with pytest.raises(InvalidUIDError):
        validate_uid(uid, "SOP Instance UID")


def test_same_instance_in_another_encoding_is_a_duplicate(archive: Archive,
                                                          corpus: Path) -> None:
    ladder = corpus / "odd/ts_ladder_ct"
    first = archive.store(ladder / "CTImage_LittleEndianImplicit__1.2.840.10008.1.2.dcm")
    again = archive.store(ladder / "CTImage_LittleEndianExplicit__1.2.840.10008.1.2.1.dcm")
    assert (first.status, again.status) == ("stored", "duplicate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(ladder / "CTImage_LittleEndianExplicit__1.2.840.10008.1.2.1.dcm")
    ds.PatientName = "CORRECTED^NAME"  # same pixels, corrected header: not silently dropped
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ConflictError):
        archive.store(buffer.getvalue())
    assert archive.stats()["instances"] == 1


def test_a_durable_single_store_is_decided_by_the_index_put(
        archive: Archive, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single store's staged data is durable before its commit: the index is not asked
    first (one round trip fewer on PostgreSQL); its put finds the instance stored and
    the commit compares the two as before: the same instance in another encoding is a
    duplicate, a corrected header a conflict naming the attribute, and neither leaves
    staged data behind.  A batch that repeats a UID still asks first."""
    from pacscore.ingest.outcomes import Prepared
    from pacscore.ingest.prepare import prepare

    asked: list[int] = []
    get_many = type(archive.index).get_many

    def counted(self: object, uids: list[str]) -> dict[str, object]:
        asked.append(len(uids))
        return get_many(self, uids)  # type: ignore[arg-type]

    monkeypatch.setattr(type(archive.index), "get_many", counted)
    ladder = corpus / "odd/ts_ladder_ct"
    implicit = ladder / "CTImage_LittleEndianImplicit__1.2.840.10008.1.2.dcm"
    explicit = ladder / "CTImage_LittleEndianExplicit__1.2.840.10008.1.2.1.dcm"
    assert archive.store(implicit).status == "stored"
    assert archive.store(explicit).status == "duplicate"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(explicit)
    ds.PatientName = "CORRECTED^NAME"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ConflictError, match=r"\(0010,0010\) PatientName"):
        archive.store(buffer.getvalue())
    assert asked == []
    assert archive.stats()["instances"] == 1
    assert list(archive.store_.staging.iterdir()) == []

    def staged(path: Path) -> Prepared:
        return prepare(path.read_bytes(), str(path), archive.config, archive.store_,
                       flush=True)

    twice = [staged(explicit), staged(explicit)]
    outcomes = archive._committer.commit(twice)
    assert asked == [2]
    assert [getattr(o, "status", None) for o in outcomes] == ["duplicate", "duplicate"]
    assert list(archive.store_.staging.iterdir()) == []


def test_worker_processes_store_from_threads_and_survive_a_killed_worker(
        tmp_path: Path, ct_series: list[Path]) -> None:
    """Network front ends store from many threads through worker processes; a worker
    that dies (OOM killer, a codec crash) is replaced and the archive stays usable."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    with Archive(tmp_path / "a", ArchiveConfig(prepare_workers=2)) as archive:
        archive.start_workers()
        assert archive._workers is not None
        victim = archive._workers.pids()[0]
        os.kill(victim, signal.SIGKILL)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(archive.store, ct_series))
        assert {r.status for r in results} == {"stored"}
        assert victim not in archive._workers.pids()
        assert archive.stats()["instances"] == len(ct_series)
        sop = results[0].sop_instance_uid
        assert np.array_equal(_pixels(archive.get(sop)), _pixels(ct_series[0].read_bytes()))


def test_group_commit_answers_after_the_flush_and_overlaps_flushes(
        tmp_path: Path, ct_series: list[Path]) -> None:
    """Concurrent stores: the next batch commits while the previous one makes its
    renames durable, and no store returns before its own batch's flush finished; a
    failed flush fails the stores of its batch (they are committed: a retry is a
    duplicate)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pacscore import ArchiveStorageError

    with Archive(tmp_path / "a", ArchiveConfig(prepare_workers=0)) as archive:
        real = archive.store_.sync_published
        flushed: set[str] = set()
        running, overlap = [0], [0]
        lock = threading.Lock()

        def slow_flush(locs: list[str]) -> None:
            with lock:
                running[0] += 1
                overlap[0] = max(overlap[0], running[0])
            time.sleep(0.3)
            real(locs)
            with lock:
                flushed.update(locs)
                running[0] -= 1

        archive.store_.sync_published = slow_flush  # type: ignore[method-assign]

        def store(data: bytes) -> str:
            result = archive.store(data)
            location = archive.record(result.sop_instance_uid).location
            assert location in flushed, "answered before its renames were flushed"
            return result.status

        with ThreadPoolExecutor(len(ct_series)) as pool:
            statuses = list(pool.map(store, [p.read_bytes() for p in ct_series]))
        assert statuses == ["stored"] * len(ct_series)
        assert overlap[0] > 1, "every batch waited for the previous batch's flush"

        def failing_flush(locs: list[str]) -> None:
            raise ArchiveStorageError("flushing published frames failed: EIO")

        archive.store_.sync_published = failing_flush  # type: ignore[method-assign]
        extra = tmp_path / "extra.dcm"
        ds = pydicom.dcmread(ct_series[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(extra)
        with pytest.raises(ArchiveStorageError, match="EIO"):
            archive.store(extra)
        archive.store_.sync_published = real  # type: ignore[method-assign]
        assert archive.store(extra).status == "duplicate"
        assert archive.stats()["instances"] == len(ct_series) + 1
        assert np.array_equal(_pixels(archive.get(str(ds.SOPInstanceUID))), ds.pixel_array)


def test_delete_waits_for_a_commit_between_its_index_transaction_and_rename(
        tmp_path: Path, ct_series: list[Path]) -> None:
    """An instance is findable from its index transaction on, before its rename: a
    delete arriving then must not run until the rename is done, or the renamed
    frames would stay behind, owned by nobody."""
    import threading

    with Archive(tmp_path / "a", ArchiveConfig(prepare_workers=0)) as archive:
        real = archive.store_.publish
        indexed, release = threading.Event(), threading.Event()

        def paused_publish(locs: list[str]) -> None:
            indexed.set()
            assert release.wait(10)
            real(locs)

        archive.store_.publish = paused_publish  # type: ignore[method-assign]
        storing = threading.Thread(target=archive.store, args=(ct_series[0],))
        storing.start()
        assert indexed.wait(10)
        (match,) = archive.find("instance")  # already findable
        sop = str(match["SOPInstanceUID"])
        assert archive.pixels(sop).shape == (512, 512)  # read from staging meanwhile
        deleting = threading.Thread(target=archive.delete, args=("instance", sop))
        deleting.start()
        deleting.join(0.3)
        assert deleting.is_alive(), "the delete ran between the commit and its rename"
        release.set()
        storing.join(10)
        deleting.join(10)
        assert archive.stats()["instances"] == 0
        assert list(archive.store_.locations()) == [] and archive.store_.staged() == []
        assert archive.index.pending() == []


def test_one_writer_per_archive_others_read(tmp_path: Path, ct_series: list[Path]) -> None:
    """A second process opening an archive that is being written (a running `pacscore
    serve`, an import) may read it but must neither write nor run crash recovery, which
    would delete the writer's in-flight frames."""
    import sys

    root = tmp_path / "a"
    with Archive(root) as writer:
        sop = writer.store(ct_series[0]).sop_instance_uid
        staged = writer.store_.staging / "in-flight-of-the-writer"
        staged.write_bytes(b"x")
        probe = (
            "import sys, pacscore\n"
            "a = pacscore.Archive(sys.argv[1])\n"
            "print(a.writable, a.stats()['instances'], a.record(sys.argv[2]).bytes_in > 0)\n"
            "try:\n"
            "    a.store(sys.argv[3])\n"
            "except pacscore.ArchiveBusyError as exc:\n"
            "    print('refused:', exc.hint)\n"
            "a.close()\n")
        out = subprocess.run([sys.executable, "-c", probe, str(root), sop, str(ct_series[1])],
                             capture_output=True, text=True, check=True).stdout
        assert out.splitlines()[0] == "False 1 True"
        assert out.splitlines()[1].startswith("refused: send the data through")
        assert staged.exists()  # the reader did not "recover" the writer's staging
        assert writer.writable and writer.stats()["instances"] == 1
        staged.unlink()
    holder = subprocess.Popen(  # a long read-only job (verify) holds no lock
        [sys.executable, "-c", "import sys, time, pacscore\n"
         "a = pacscore.Archive(sys.argv[1], readonly=True)\n"
         "print(a.writable, flush=True)\ntime.sleep(60)", str(root)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "False"
        with Archive(root) as after:  # the writer's lock was released on close, too
            assert after.writable
            assert after.store(ct_series[1]).status == "stored"
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_native_ybr_full_422_goes_out_uncompressed_only(archive: Archive,
                                                       corpus: Path) -> None:
    """A native YBR_FULL_422 object is kept as received; asked for in another
    uncompressed syntax its Pixel Data value goes out as it is; asked for a compressed
    one, the archive says it cannot (no ValueError from deep inside)."""
    from pacscore.errors import UnsupportedTransferSyntaxError

    src = corpus / "odd/ybr/US_YBR_FULL_422_uncompressed.dcm"
    result = archive.store(src)
    assert result.stored_syntax == "1.2.840.10008.1.2.1"
    implicit = pydicom.dcmread(io.BytesIO(archive.get(result.sop_instance_uid,
                                                      "1.2.840.10008.1.2")))
    assert implicit.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert implicit.PixelData == pydicom.dcmread(src).PixelData
    assert implicit.PhotometricInterpretation == "YBR_FULL_422"
    with pytest.raises(UnsupportedTransferSyntaxError, match="YBR_FULL_422"):
        archive.get(result.sop_instance_uid, "1.2.840.10008.1.2.4.80")


@pytest.mark.parametrize("target", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                    "1.2.840.10008.1.2.4.80"])
def test_a_deflated_object_goes_out_in_other_syntaxes(archive: Archive, ct_series: list[Path],
                                                      tmp_path: Path, target: str) -> None:
    """A deflated data set is kept as received; asked for in another syntax, its
    inflated data set is what goes out (was: 'incomplete or truncated stream')."""
    ds = pydicom.dcmread(ct_series[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = archive.store(path)
    assert result.stored_syntax == "1.2.840.10008.1.2.1.99"
    out = pydicom.dcmread(io.BytesIO(archive.get(result.sop_instance_uid, target)))
    assert out.file_meta.TransferSyntaxUID == target
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    assert [e.tag for e in out if e.tag != 0x7FE00010] == \
        [e.tag for e in ds if e.tag != 0x7FE00010]
