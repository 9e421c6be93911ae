"""Network service figures (issue: PACS network services), next to Orthanc's.

C-STORE is measured against Orthanc 1.10.1 from the Debian package in the same run,
round by round (:mod:`orthanc`): raw storage with Nagle's algorithm off in its DICOM
server (``TCP_NODELAY=1``, its fastest here), raw storage as shipped (the issue's
"default settings", Nagle on), and with its zlib compression, the only compressed
ingest it has here (its JPEG 2000 ingest transcoding needs the GDCM plugin, which is
not installed).  Without Orthanc, and for
the query and retrieve figures (Orthanc's DICOMweb plugin, Debian ``orthanc-dicomweb``,
is installed but not measured here yet), the issue's Orthanc figures are printed beside
ours.  A series of CT-size instances (the 30-slice CT series cloned
with new SOP Instance UIDs) is stored with DCMTK storescu, then queried and retrieved:
500 instances, the issue's series size.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import benchlib
import imagecodecs
import numpy as np
import orthanc
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from pacscore.dicom.syntaxes import EXPLICIT_LE, IMPLICIT_LE
from pacscore.testing import cli, serve_process, serving

HTJ2K = "1.2.840.10008.1.2.4.202"

STORESCU = Path("/usr/bin/storescu")
FINDSCU = Path("/usr/bin/findscu")
GETSCU = Path("/usr/bin/getscu")
ENV = {**os.environ, "TCP_NODELAY": "1"}
ORTHANC = {"store_1": 99, "store_4": 142, "store_4_zlib": 45, "qido_ms": 680, "find_ms": 520,
           "metadata_ms": 1100, "frame_ms": 9, "series_inst_s": 640, "get_inst_s": 580}


@pytest.fixture(scope="module")
def series(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    n = 500
    src = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    out = tmp_path_factory.mktemp("series")
    series_uid = generate_uid()
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(src[i % len(src)])
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = i + 1
        path = out / f"{i:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def _storescu(port: int, files: list[Path], associations: int,
              called: str = "PACSCORE") -> float:
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen([str(STORESCU), "-aet", "BENCH", "-aec", called,
                               "127.0.0.1", str(port), *map(str, c)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c in chunks]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    assert codes == [0] * associations
    return elapsed


SCU_CPU: list[float] = []
"""CPU seconds per instance of storescu itself in pacscore's rounds (the CPU bound's
client share, issue 18.2)."""


def _storescu_counted(port: int, files: list[Path], associations: int) -> float:
    """:func:`_storescu`, recording storescu's own CPU per instance in :data:`SCU_CPU`
    (the children's rusage: only the storescu processes are waited for meanwhile)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = _storescu(port, files, associations)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    SCU_CPU.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                   / len(files))
    return elapsed


def _codec_cpu(series: list[Path]) -> float:
    """CPU seconds per instance of HTJ2K encode + verify-decode of the series' frames,
    one core (every distinct pixel data once; the arrays read before the clock)."""
    arrays = {}
    for path in series:
        ds = pydicom.dcmread(path)
        arrays.setdefault(hashlib.sha1(ds.PixelData).digest(), ds.pixel_array)
    start = time.process_time()
    for a in arrays.values():
        back = imagecodecs.htj2k_decode(imagecodecs.htj2k_encode(a))
        assert np.array_equal(back.reshape(a.shape), a)
    return (time.process_time() - start) / len(arrays)


def _checks_cpu(series: list[Path]) -> float:
    """CPU seconds per instance of the integrity checks every stored instance gets
    beside the codec: SHA-256 of the file, CRC-32 of its frame (the first 30 files)."""
    blobs = [(path.read_bytes(), pydicom.dcmread(path).PixelData) for path in series[:30]]
    start = time.process_time()
    for data, pixels in blobs:
        hashlib.sha256(data).digest()
        zlib.crc32(pixels)
    return (time.process_time() - start) / len(blobs)


STORE_ROUNDS = 3
"""Rounds with 4 associations, each on a fresh server and archive, alternating with
Orthanc's: one round moves +-15% on this machine (a VM), so the medians of three are
reported with their ranges."""


SERVER_CPU: list[float] = []
"""CPU seconds per instance of pacscore's server (its process and its workers) in the
4-association rounds."""
ORTHANC_CPU: list[float] = []
"""The same for Orthanc storing raw (Nagle off)."""
STORESCP_CPU: list[float] = []
"""The same for DCMTK storescp (:func:`orthanc.storescp_running`)."""


def _store_round(archive: Path, series: list[Path], associations: int,
                 benchmark: Any = None) -> float:
    """Start a server on a new archive, store the series, return instances per second;
    with ``benchmark``: timed by it, and the query and retrieve figures are measured on
    that archive before the server stops.  4 associations: the server's CPU per
    instance goes to :data:`SERVER_CPU`."""
    cli("ae", "add", "BENCH", "--host", "127.0.0.1", "--archive", str(archive))
    with serve_process(archive) as (proc, ports):
        os.sync()  # start each round from the same disk state (earlier rounds flushed)
        time.sleep(1)
        args = (ports["dimse"], series, associations)
        before = benchlib.tree_cpu(proc.pid)
        seconds = (benchmark.pedantic(_storescu_counted, args=args, rounds=1, iterations=1)
                   if benchmark is not None else _storescu_counted(*args))
        if associations == 4:
            SERVER_CPU.append((benchlib.tree_cpu(proc.pid) - before) / len(series))
        if benchmark is not None:
            _query_and_retrieve(benchmark, archive, ports, len(series))
    return len(series) / seconds


def _orthanc_round(folder: Path, series: list[Path], associations: int,
                   compression: bool = False, nodelay: bool = True,
                   cpu: list[float] | None = None) -> float | None:
    """The same round against Orthanc; None when it is not installed or failed (the
    peer's trouble is reported, not a failure of our benchmark); ``cpu`` receives its
    CPU seconds per instance."""
    if not orthanc.installed():
        return None
    try:
        pids: list[int] = []
        with orthanc.running(folder, compression=compression, nodelay=nodelay,
                             pids=pids) as port:
            os.sync()
            time.sleep(1)
            before = benchlib.tree_cpu(pids[0])
            rate = len(series) / _storescu(port, series, associations, orthanc.AE_TITLE)
            if cpu is not None:
                cpu.append((benchlib.tree_cpu(pids[0]) - before) / len(series))
            return rate
    except (AssertionError, RuntimeError, OSError) as exc:
        print(f"Orthanc round in {folder} failed, its figure is left out: {exc!r}")
        return None
    finally:
        shutil.rmtree(folder / "storage", ignore_errors=True)  # 264 MB a round


def _storescp_round(folder: Path, series: list[Path]) -> None:
    """The series sent to DCMTK storescp with 4 associations; its CPU per instance
    goes to :data:`STORESCP_CPU` (its processes per association, waited for or not)."""
    if not orthanc.STORESCP.exists():
        return
    pids: list[int] = []
    with orthanc.storescp_running(folder, "STORESCP", pids) as port:
        time.sleep(0.5)
        before = benchlib.tree_cpu(pids[0])
        _storescu(port, series, 4, "STORESCP")
        time.sleep(0.5)  # the last association's process ends
        STORESCP_CPU.append((benchlib.tree_cpu(pids[0]) - before) / len(series))
    shutil.rmtree(folder, ignore_errors=True)


def _peer(rates: list[float | None], issue_key: str, what: str) -> tuple[float, str]:
    """Orthanc's figure for a row: the median of this run's rounds, else the issue's."""
    measured = [r for r in rates if r is not None]
    if not measured:
        return ORTHANC[issue_key], f"Orthanc {what} {ORTHANC[issue_key]} inst/s (issue " \
                                   f"figure; Orthanc not installed or failed)"
    median = statistics.median(measured)
    spread = f" ({min(measured):.0f}-{max(measured):.0f})" if len(measured) > 1 else ""
    return median, f"Orthanc {what} {median:.0f} inst/s{spread} (same run)"


@pytest.mark.skipif(not STORESCU.exists(), reason="DCMTK not installed")
def test_services(benchmark: Any, series: list[Path], tmp_path: Path, smoke: bool) -> None:
    n = len(series)
    rounds = 1 if smoke else STORE_ROUNDS
    rates4: list[float] = []
    peer4: list[float | None] = []
    for i in range(rounds):  # interleaved: both see the same machine states
        last = i == rounds - 1
        rates4.append(_store_round(tmp_path / f"a4-{i}", series, 4,
                                   benchmark if last else None))
        peer4.append(_orthanc_round(tmp_path / f"o4-{i}", series, 4, cpu=ORTHANC_CPU))
        _storescp_round(tmp_path / f"scp-{i}", series)
    rate1 = _store_round(tmp_path / "a1", series, 1)
    peer1 = _orthanc_round(tmp_path / "o1", series, 1)
    zlib4 = _orthanc_round(tmp_path / "oz", series, 4, compression=True)
    shipped4 = _orthanc_round(tmp_path / "os", series, 4, nodelay=False)
    _getscu_series(benchmark, series, tmp_path / "kept")
    spread = f"{min(rates4):.0f}-{max(rates4):.0f}"
    rate4 = statistics.median(rates4)
    rows = (  # associations, issue figure, extra_info key, Orthanc's mode, ...
        (1, "store_1", "store_1_raw", "raw", rate1, [peer1], "one round each"),
        (4, "store_4", "store_4_raw", "raw", rate4, peer4,
         f"median of {rounds} round(s) ({spread}), fresh server each"),
        (4, "store_4_zlib", "store_4_zlib_compressing", "compressing (zlib)", rate4, [zlib4],
         "its only compressed ingest here; one round"),
        (4, "store_4", "store_4_raw_shipped", "raw as shipped (Nagle on)", rate4, [shipped4],
         "the issue's 'default settings': no TCP_NODELAY in Orthanc's environment; one "
         "round"))
    codec = _codec_cpu(series)
    scu = statistics.median(SCU_CPU)
    cpu_bound = (os.cpu_count() or 1) / (codec + scu)
    benchlib.report(benchmark, "C-STORE, 4 associations, vs the CPU bound",
                    subject=f"pacscore {rate4:.0f} inst/s",
                    baseline=f"CPU bound {cpu_bound:.0f} inst/s = {os.cpu_count()} cores / "
                             f"(HTJ2K encode + verify-decode {codec * 1e3:.2f} ms + storescu "
                             f"{scu * 1e3:.2f} ms CPU per instance)",
                    ratio=rate4 / cpu_bound, target=">= 0.8", key="store_4_cpu_bound",
                    note="issue 18.2; both CPU figures measured in this run")
    _report_ceiling(benchmark, series, codec, scu)
    for k, key, info_key, what, rate, peer, note in rows:
        theirs, baseline = _peer(peer, key, what)
        benchlib.report(benchmark, f"C-STORE, {k} association(s), HTJ2K + verify",
                        subject=f"pacscore {rate:.0f} inst/s", baseline=baseline,
                        ratio=rate / theirs, target=">= 200 inst/s with 4",
                        key=info_key,
                        note=f"{n} CT instances, storescu; {note}; the issue measured "
                             f"Orthanc at {ORTHANC[key]}")


def _report_ceiling(benchmark: Any, series: list[Path], codec: float, scu: float) -> None:
    """What the 0.8 goal leaves for everything a server does beyond the codec, against
    the CPU per instance that pacscore, Orthanc (no codec at all) and storescp (no
    codec, flush, hash or index) spend in this run; the ratio is the goal's ceiling for
    a server as frugal as storescp that also hashes and checksums (:func:`_checks_cpu`)
    but flushes nothing."""
    if not STORESCP_CPU:
        return
    ours = statistics.median(SERVER_CPU) - codec
    checks = _checks_cpu(series)
    floor = statistics.median(STORESCP_CPU) + checks
    peer = f"Orthanc raw {statistics.median(ORTHANC_CPU) * 1e3:.2f} ms, " if ORTHANC_CPU else ""
    budget = (codec + scu) * (1 / 0.8 - 1)
    benchlib.report(benchmark, "C-STORE, server CPU per instance beyond the codec",
                    subject=f"pacscore {ours * 1e3:.2f} ms",
                    baseline=f"{peer}DCMTK storescp + SHA-256 and CRC-32 "
                             f"{floor * 1e3:.2f} ms ({checks * 1e3:.2f} of it the checks); "
                             f"the 0.8 goal leaves {budget * 1e3:.2f} ms",
                    ratio=(codec + scu) / (codec + scu + floor), target=">= 0.8",
                    key="store_4_ceiling",
                    note="ratio: the goal's ceiling for a server spending beyond the codec "
                         "only what storescp spends plus pacscore's integrity checks "
                         "(storescp writes files: no flush, index or codec; Orthanc flushes "
                         "and indexes, no codec); issue 18.2")


def _p50(fn: Any, rounds: int = 15) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _query_and_retrieve(benchmark: Any, archive: Path, ports: dict[str, int], n: int) -> None:
    token = (archive / "security" / "admin-token").read_text().strip()
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    base = f"http://127.0.0.1:{ports['http']}/dicom-web"
    studies = http.get(f"{base}/studies", timeout=60).json()
    study = studies[0]["0020000D"]["Value"][0]
    series_uid = http.get(f"{base}/studies/{study}/series", timeout=60
                          ).json()[0]["0020000E"]["Value"][0]
    url = f"{base}/studies/{study}/series/{series_uid}"
    qido = _p50(lambda: http.get(f"{url}/instances", timeout=60).json())
    time.sleep(4)  # the series has been quiet: its metadata is precomputed by now
    start = time.perf_counter()
    first = http.get(f"{url}/metadata", timeout=300).content
    meta_first = (time.perf_counter() - start) * 1000
    assert len(json.loads(first)) == n
    meta = _p50(lambda: http.get(f"{url}/metadata", timeout=300).content)
    sop = http.get(f"{url}/instances", timeout=60).json()[0]["00080018"]["Value"][0]
    frame = _p50(lambda: http.get(f"{url}/instances/{sop}/frames/1", timeout=60, headers={
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    ).content, rounds=50)
    def whole_series() -> int:
        """Bytes of the whole series, read as a viewer does: streamed, 1 MiB at a time
        (building one 94 MB ``bytes`` cost the client 0.3-0.4 s of page faults in the
        first requests of a run, which is the client's cost, not the server's)."""
        with http.get(url, timeout=600, stream=True, headers={
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
                      ) as response:
            response.raise_for_status()
            return sum(len(c) for c in response.iter_content(1 << 20))

    size = whole_series()  # untimed: the first request of a connection sets it up
    rates = []
    for _ in range(5):  # the median of five: one request is at the mercy of the machine
        start = time.perf_counter()
        assert whole_series() == size
        rates.append(n / (time.perf_counter() - start))
    series_rate = statistics.median(rates)
    find = _p50(lambda: subprocess.run(
        [str(FINDSCU), "-aet", "BENCH", "-aec", "PACSCORE", "-S", "-k",
         "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}", "-k",
         f"SeriesInstanceUID={series_uid}", "-k", "SOPInstanceUID", "127.0.0.1",
         str(ports["dimse"])], env=ENV, capture_output=True, check=True), rounds=5)
    assert size > n * 50_000  # every part holds a compressed 512x512 CT frame
    get_rate = _pynetdicom_get(ports["dimse"], study, series_uid, n)
    for figure, ours, theirs, unit, target in (
            ("QIDO-RS instances of the series", qido, ORTHANC["qido_ms"], "ms", "<= 50 ms"),
            ("C-FIND image level (findscu, incl. process start)", find, ORTHANC["find_ms"],
             "ms", "<= 100 ms"),
            ("WADO-RS series metadata, first request", meta_first, ORTHANC["metadata_ms"],
             "ms", "<= 100 ms"),
            ("WADO-RS series metadata, p50", meta, ORTHANC["metadata_ms"], "ms",
             "<= 100 ms"),
            ("WADO-RS one frame, stored syntax, p50", frame, ORTHANC["frame_ms"], "ms",
             "<= 3 ms")):
        benchlib.report(benchmark, figure, subject=f"pacscore {ours:.1f} {unit}",
                        baseline=f"Orthanc {theirs} {unit} (issue figure)",
                        ratio=theirs / ours, target=target, key=figure[:20],
                        note=f"{n} instances")
    benchlib.report(benchmark, "WADO-RS whole series, stored syntax",
                    subject=f"pacscore {series_rate:.0f} inst/s",
                    baseline=f"Orthanc {ORTHANC['series_inst_s']} inst/s (issue figure)",
                    ratio=series_rate / ORTHANC["series_inst_s"], target=">= 1000 inst/s",
                    key="series_rate",
                    note=f"{n} instances; median of {', '.join(f'{r:.0f}' for r in rates)}")
    benchlib.report(benchmark, "C-GET whole series (pynetdicom SCU), HTJ2K stored",
                    subject=f"pacscore {get_rate:.0f} inst/s",
                    baseline=f"Orthanc {ORTHANC['get_inst_s']} inst/s (issue figure)",
                    ratio=get_rate / ORTHANC["get_inst_s"], target=">= 1000 inst/s",
                    key="get_rate", note=f"{n} instances")


def _getscu_series(benchmark: Any, series: list[Path], archive: Path) -> None:
    """C-GET of the series with DCMTK getscu (data received, not written: ``--ignore``)
    from an archive that keeps what it receives (``--codec keep``): the stored syntax is
    Explicit VR Little Endian, as in Orthanc's raw storage the issue measured; getscu
    3.6.7 cannot take HTJ2K.  Median of 5 runs, getscu's process start included."""
    cli("import", str(series[0].parent), "--archive", str(archive), "--codec", "keep")
    cli("ae", "add", "BENCH", "--host", "127.0.0.1", "--archive", str(archive))
    first = pydicom.dcmread(series[0], stop_before_pixels=True)
    with serving(archive) as ports:
        command = [str(GETSCU), "-aet", "BENCH", "-aec", "PACSCORE", "-S", "--ignore",
                   "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                   "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
                   "127.0.0.1", str(ports["dimse"])]
        check = subprocess.run([*command, "-v"], env=ENV, capture_output=True, text=True,
                               check=True).stderr
        assert f"Number of Completed Suboperations : {len(series)}" in check, check[-2000:]
        rates = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run(command, env=ENV, capture_output=True, check=True)
            rates.append(len(series) / (time.perf_counter() - start))
    rate = statistics.median(rates)
    benchlib.report(benchmark, "C-GET whole series (DCMTK getscu), stored syntax",
                    subject=f"pacscore {rate:.0f} inst/s",
                    baseline=f"Orthanc {ORTHANC['get_inst_s']} inst/s (issue figure)",
                    ratio=rate / ORTHANC["get_inst_s"], target=">= 1000 inst/s",
                    key="getscu_rate",
                    note=f"{len(series)} instances kept as received (Explicit VR LE); "
                         f"median of {', '.join(f'{r:.0f}' for r in rates)}")


def _pynetdicom_get(port: int, study: str, series: str, n: int) -> float:
    """C-GET of the series in inst/s with pynetdicom as the SCU (HTJ2K listed first, so
    the stored codestream passes through; DCMTK 3.6.7's getscu knows no HTJ2K)."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ae = AE("BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    # A viewer lists the syntaxes it prefers first; the acceptor takes the first one.
    ae.add_requested_context(CTImageStorage, [HTJ2K, EXPLICIT_LE, IMPLICIT_LE])
    ae.maximum_pdu_size = 0
    received = []
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE,
                                        lambda e: received.append(1) or 0x0000)])
    assert assoc.is_established
    try:
        get = pydicom.Dataset()
        get.QueryRetrieveLevel = "SERIES"
        get.StudyInstanceUID, get.SeriesInstanceUID = study, series
        start = time.perf_counter()
        for _ in assoc.send_c_get(get, StudyRootQueryRetrieveInformationModelGet):
            pass
        rate = len(received) / (time.perf_counter() - start)
        assert len(received) == n
    finally:
        assoc.release()
    return rate
