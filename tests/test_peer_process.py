"""pacscore.testing.peer_process: a peer that never listens is reported with its log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pacscore.testing import free_port, peer_process


def test_a_peer_that_exits_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    command = [sys.executable, "-c", "print('no licence'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match=r"did not start \(exit 3\)[\s\S]*no licence"), \
            peer_process(command, free_port(), log):
        pass


def test_a_listening_peer_is_yielded_then_stopped(tmp_path: Path) -> None:
    port = free_port()
    serve = ("import socket, time; s = socket.socket(); "
             f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)")
    with peer_process([sys.executable, "-c", serve], port, tmp_path / "peer.log") as proc:
        assert proc.poll() is None
    assert proc.returncode is not None  # stopped on leaving, not left running
