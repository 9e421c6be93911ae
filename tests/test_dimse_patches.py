"""The pynetdicom internals the DIMSE fast paths patch and use (the canary), and the
fallback to pynetdicom's own code when one of them is gone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pynetdicom
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.services import dimse_patches
from pacscore.services.dimse import DimseServer
from pacscore.testing import cli, free_port

DCMTK = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}


def test_every_patched_and_used_pynetdicom_name_exists() -> None:
    """The canary: pyproject.toml pins the tested pynetdicom; every name the fast
    paths replace or read exists in the installed one, with the parameters expected.
    When this fails after an upgrade, the server still runs (on pynetdicom's code,
    slower): adapt dimse_transport/dimse_receive/dimse_send/dimse_accept, then the
    lists in dimse_patches."""
    assert pynetdicom.__version__.startswith("3.0."), pynetdicom.__version__
    assert dimse_patches.missing() == []
    pin = next(line for line in Path(__file__).parent.parent.joinpath(
        "pyproject.toml").read_text().splitlines() if '"pynetdicom' in line)
    assert '"pynetdicom>=3.0,<3.1"' in pin


def test_a_missing_or_changed_name_is_reported() -> None:
    found = dimse_patches.missing(
        patched=[("pynetdicom.dul.DULServiceProvider.send_pdu", ("self", "pdu")),
                 ("pynetdicom.dul.DULServiceProvider.no_such_method", ("self",))],
        used=["assoc.no_such_attribute", "pynetdicom.association.Association.send_c_store"
              "(self, dataset)"])
    assert len(found) == 4, found
    assert any("send_pdu" in f and "now ('self', 'primitive')" in f for f in found)


@pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed")
def test_without_the_fast_paths_the_server_stores_echoes_finds_and_gets(
        tmp_path: Path, corpus: Path) -> None:
    """A pynetdicom that lacks one name (simulated): the server warns, leaves
    pynetdicom as it is, and DCMTK storescu, echoscu, findscu and getscu work."""
    series = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())[:3]
    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    with Archive(root, ArchiveConfig(prepare_workers=1)) as archive:
        server = DimseServer(archive, spool=tmp_path / "spool",
                             used=[*dimse_patches.USED, "assoc.no_such_attribute"])
        try:
            assert not server.fast and not dimse_patches.installed()
            port = free_port()
            server.start("127.0.0.1", port)
            peer = ["-aet", "MODALITY", "-aec", "PACSCORE", "127.0.0.1", str(port)]

            def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([str(DCMTK / tool), *args], capture_output=True,
                                      text=True, env=ENV, timeout=120, check=False)

            assert run("echoscu", *peer).returncode == 0
            stored = run("storescu", *peer, *map(str, series))
            assert stored.returncode == 0, stored.stderr
            assert archive.stats()["instances"] == 3
            study = pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
            found = run("findscu", "-S", "-k", "QueryRetrieveLevel=IMAGE",
                        "-k", f"StudyInstanceUID={study}", "-k", "SOPInstanceUID", *peer)
            assert found.returncode == 0 and found.stderr.count("(0008,0018)") >= 3
            out = tmp_path / "got"
            out.mkdir()
            got = run("getscu", "-S", "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={study}", "-od", str(out), *peer)
            assert got.returncode == 0, got.stderr
            assert len(list(out.iterdir())) == 3
        finally:
            server.stop()
    assert dimse_patches.install()  # back for the other tests of this process


def test_a_requestor_with_the_fast_paths_gets_each_response_at_once(tmp_path: Path,
                                                                     corpus: Path) -> None:
    """With the fast paths installed in its process (as they are in the server, whose
    C-MOVE sub-associations and storage commitment reports are requestors), a
    pynetdicom SCU alternating C-STORE and C-ECHO is answered at once: the reactor's
    wait on the DIMSE queue used to take the wake-up meant for the thread waiting for
    the response, which then sat out the 30 s DIMSE timeout."""
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

    from pacscore.testing import serving

    series = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())[:10]
    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    assert dimse_patches.install()
    with serving(root) as ports:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        slowest = 0.0
        try:
            for _ in range(2):
                for path in series:
                    for request in (path, None):
                        start = time.monotonic()
                        answer = assoc.send_c_echo() if request is None else \
                            assoc.send_c_store(request)
                        assert answer.Status == 0x0000
                        slowest = max(slowest, time.monotonic() - start)
        finally:
            assoc.release()
    assert slowest < 10, f"a response took {slowest:.1f} s"
