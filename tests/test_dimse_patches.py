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
from pacscore.services.dimse._fast import patches as dimse_patches
from pacscore.services.dimse._fast import scope as dimse_scope
from pacscore.services.dimse.server import DimseServer
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
    """On the fast paths (as the server's C-MOVE sub-associations and storage
    commitment reports are: requestors of its AE, claimed here for a pynetdicom SCU), a
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
        dimse_scope.claim(ae, None)
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
            dimse_scope.release(ae)
    assert slowest < 10, f"a response took {slowest:.1f} s"


def test_a_response_never_goes_to_the_paused_reactor(tmp_path: Path) -> None:
    """pynetdicom's own race, forced: the SCU's association thread passed its checkpoint
    just before ``send_c_echo`` cleared it (``_is_paused`` is still True then), and the
    OS runs it next only once the response is queued, before the thread waiting for
    that response wakes.  It must leave the response to ``send_c_echo`` (before: it
    dropped it, "Received unexpected C-ECHO service message", and the answer was an
    empty data set after the DIMSE timeout: seen once in CI)."""
    import queue
    import threading
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from pacscore.testing import serving

    go = threading.Event()  # the response is queued: the held thread may look now

    class HeldCheckpoint(threading.Event):
        """The checkpoint; once armed, the thread's next pass is held until ``go``."""

        def __init__(self) -> None:
            super().__init__()
            self.armed, self.holding = threading.Event(), threading.Event()

        def wait(self, timeout: float | None = None) -> bool:
            passed = super().wait(timeout)
            if self.armed.is_set() and threading.current_thread() is assoc:
                self.armed.clear()
                self.holding.set()
                go.wait(5)
                time.sleep(0.05)  # the look at the queue comes before the waiter wakes
            return passed

    class SlowToWake(queue.Queue):  # type: ignore[type-arg]
        """The DIMSE queue, whose waiter wakes 0.3 s after a response is queued."""

        def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
            with self.mutex:
                self._put(item)  # type: ignore[attr-defined]
                self.unfinished_tasks += 1
            if not getattr(item[1], "is_valid_request", True):  # type: ignore[index]
                go.set()
                time.sleep(0.3)
            with self.not_empty:
                self.not_empty.notify()

    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    assert dimse_patches.install()
    with serving(root) as ports:
        ae = AE(ae_title="MODALITY")
        ae.dimse_timeout = 3
        ae.add_requested_context(Verification)
        dimse_scope.claim(ae, None)
        assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        try:
            assert assoc.is_established
            checkpoint = HeldCheckpoint()
            checkpoint.set()
            assoc._reactor_checkpoint = checkpoint
            assoc.dimse.msg_queue = SlowToWake()
            for _ in range(2):
                go.clear()
                checkpoint.armed.set()
                assert checkpoint.holding.wait(5)
                checkpoint.holding.clear()
                start = time.monotonic()
                answer = assoc.send_c_echo()
                assert "Status" in answer and answer.Status == 0x0000
                assert time.monotonic() - start < 2
        finally:
            assoc.release()
            dimse_scope.release(ae)


def test_an_idle_association_polls_its_queue_rarely(tmp_path: Path) -> None:
    """The reactor loop's 1 ms poll (recognised by its caller, Association._run_reactor)
    waits on the DIMSE queue instead, 5 ms at most: an idle claimed association looks
    at its queue a few hundred times a second, not a thousand."""
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from pacscore.testing import serving

    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    assert dimse_patches.install()
    with serving(root) as ports:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        dimse_scope.claim(ae, None)
        assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        looks = [0]
        original = assoc.dimse.get_msg

        def counting(block: bool = False) -> object:
            looks[0] += 1
            return original(block)

        try:
            assert assoc.is_established
            assoc.dimse.get_msg = counting
            time.sleep(1.0)
            idle = looks[0]
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
            dimse_scope.release(ae)
    assert 20 < idle < 400, f"{idle} looks at the queue in 1 s idle"


def test_a_foreign_association_runs_pynetdicoms_own_code(tmp_path: Path, corpus: Path) -> None:
    """The fast paths act on the server's own associations only: a pynetdicom SCP and
    SCU that the embedding program runs in the same process as a pacscore server go
    through pynetdicom's code, untouched, and still work."""
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

    marks = ("_pacscore_wake", "_pacscore_poll", "_pacscore_receiver", "_pacscore_stopping")

    def touched(assoc: object) -> list[str]:
        dul = getattr(assoc, "dul", None)
        objects = (assoc, dul, getattr(dul, "socket", None))
        return [m for o in objects if o is not None for m in marks if m in vars(o)]

    path = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())[0]
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    seen: dict[str, object] = {}
    stored = threading.Event()

    def on_store(event: evt.Event) -> int:
        seen["scp"] = touched(event.assoc)
        seen["uid"] = event.dataset.SOPInstanceUID
        stored.set()
        return 0x0000

    with Archive(root, ArchiveConfig(prepare_workers=1)) as archive:
        server = DimseServer(archive, spool=tmp_path / "spool")
        assert server.fast and dimse_patches.installed()
        server.start("127.0.0.1", pacs := free_port())
        scp = AE(ae_title="FOREIGN")
        scp.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        scp.add_supported_context(Verification)
        port = free_port()
        foreign_server = scp.start_server(("127.0.0.1", port), block=False,
                                          evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            scu = AE(ae_title="MODALITY")
            scu.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
            scu.add_requested_context(Verification)
            foreign = scu.associate("127.0.0.1", port, ae_title="FOREIGN")
            assert foreign.is_established
            assert foreign.send_c_echo().Status == 0x0000
            assert foreign.send_c_store(path).Status == 0x0000
            assert stored.wait(30) and seen == {"scp": [], "uid": uid}, seen
            assert touched(foreign) == []
            foreign.release()
            # the control: pacscore's own acceptor association does take the fast paths
            ours = scu.associate("127.0.0.1", pacs, ae_title="PACSCORE")
            assert ours.send_c_store(path).Status == 0x0000
            acceptors = server.ae.active_associations
            assert acceptors and {"_pacscore_wake", "_pacscore_receiver"} <= set(
                touched(acceptors[0]))
            assert touched(ours) == []  # the client side stays pynetdicom's own
            ours.release()
            assert archive.stats()["instances"] == 1
        finally:
            foreign_server.shutdown()
            server.stop()
