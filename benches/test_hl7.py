"""HL7 v2 over MLLP (issue 16.1): messages per second acknowledged with their commit
(each ORM^O01 NW committed with its control ID before its ACK; the goal is
>= 1,000/s): one connection waiting for each ACK, four and eight such at once, and one
pipelined (32 messages in flight).  Each row also gives the CPU per message of the server
process and of this sender (both on the same 2 cores).  Smoke run: 500 messages;
full: 10,000.  ``PACSCORE_BENCH_HL7_INDEX=postgresql://...`` runs the server on that
index, its workflow state in PostgreSQL (issue 17.3) instead of ``workflow.lmdb``."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib
import pytest

from pacscore.services.auth.security import SenderList
from pacscore.testing import serve_process

SB, EB = b"\x0b", b"\x1c\r"


def _orm(i: int) -> bytes:
    obr = [""] * 28
    obr[1], obr[4], obr[18], obr[20], obr[21], obr[24] = \
        "1", "CT^Head", f"B{i:06d}", f"S{i:06d}", "CT1", "CT"
    obr[27] = "^^^20250105093000"
    text = "\r".join([
        f"MSH|^~\\&|RIS|HOSP|PACS|HOSP|20250101||ORM^O01|BENCH{i}|P|2.3.1",
        f"PID|1||P{i % 997}^^^HOSP||DOE^JOHN||19700101|M", f"ORC|NW|PO{i}|FO{i}||SC",
        "OBR|" + "|".join(obr[1:])]) + "\r"
    return SB + text.encode() + EB


@pytest.fixture(scope="module")
def mllp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """``pacscore serve`` with its HL7 door (:func:`serve_process`: it fails, with the
    server's output, when the server does not listen, and checks its clean shutdown);
    started again on fresh ports if the first ones were taken meanwhile."""
    root = tmp_path_factory.mktemp("hl7-bench") / "archive"
    root.mkdir()
    SenderList(root).allow("127.0.0.1")
    index = os.environ.get("PACSCORE_BENCH_HL7_INDEX")
    extra = ["--index", index] if index else []
    with contextlib.ExitStack() as stack:
        for attempt in range(3):
            try:
                proc, ports = stack.enter_context(serve_process(
                    root, *extra, doors=("dimse", "http", "grpc", "hl7")))
                break
            except AssertionError:
                if attempt == 2:
                    raise
        yield ports["hl7"], proc.pid


def _send(port: int, first: int, n: int, window: int = 1) -> float:
    """Seconds to send ``n`` messages, at most ``window`` of them waiting for their ACK
    (1: each after the ACK of the last); every ACK an AA."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        sent = acked = 0
        buf = b""
        while acked < n:
            if sent < n and sent - acked < window:
                s.sendall(b"".join(_orm(first + i)
                                   for i in range(sent, min(n, acked + window))))
                sent = min(n, acked + window)
            buf += s.recv(65536)
            done = buf.count(EB)
            if done:
                assert buf.count(b"MSA|AA|") == done, buf
                acked += done
                buf = buf[buf.rfind(EB) + len(EB):]
        return time.perf_counter() - t


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(pid: int, n: int, send: Callable[[], float]) -> tuple[float, str]:
    """(messages/s, CPU note) of ``send()`` sending ``n`` messages to server ``pid``."""
    server, sender = _cpu_seconds(pid), time.process_time()
    seconds = send()
    server, sender = _cpu_seconds(pid) - server, time.process_time() - sender
    note = (f"CPU per message: server {1e3 * server / n:.2f} ms, "
            f"sender {1e3 * sender / n:.2f} ms")
    print(f"\nHL7 MLLP: {n} messages in {seconds:.2f} s = {n / seconds:.0f}/s; {note}")
    return n / seconds, note


def test_hl7_messages_per_second(benchmark: Any, mllp: tuple[int, int], smoke: bool
                                 ) -> None:
    """One connection, each message sent after the ACK of the last: every message
    waits for its own commit (two flushes of LMDB), so this one is bound by the disk's
    flush latency, not by the server's CPU."""
    port, pid = mllp
    n = 500 if smoke else 10_000
    start = [0]

    def run() -> float:
        seconds = _send(port, start[0], n)
        start[0] += n
        return seconds

    benchmark.pedantic(run, rounds=1, iterations=1)
    rate, note = _measured(pid, n, run)
    benchlib.report(benchmark, f"HL7 ORM^O01 ACKed after commit, {n} on one connection",
                    subject=f"{rate:.0f} messages/s", baseline="1,000/s target",
                    ratio=rate / 1000, target=">= 1", note=note)


def test_hl7_messages_per_second_pipelined(benchmark: Any, mllp: tuple[int, int],
                                           smoke: bool) -> None:
    """One connection with 32 messages in flight (the sender sends on before their
    ACKs): the messages that arrive during one commit are committed by the next."""
    port, pid = mllp
    n, window = (500 if smoke else 10_000), 32
    start = [3_000_000]

    def run() -> float:
        seconds = _send(port, start[0], n, window)
        start[0] += n
        return seconds

    benchmark.pedantic(run, rounds=1, iterations=1)
    rate, note = _measured(pid, n, run)
    benchlib.report(benchmark, f"HL7 ORM^O01 ACKed after commit, {n} on one connection, "
                    f"{window} in flight", subject=f"{rate:.0f} messages/s",
                    baseline="1,000/s target", ratio=rate / 1000, target=">= 1", note=note)


@pytest.mark.parametrize("senders", [4, 8])
def test_hl7_messages_per_second_from_several_senders(benchmark: Any, mllp: tuple[int, int],
                                                      smoke: bool, senders: int) -> None:
    """Four or eight connections at once (an ADT feed, an order feed, ...), each sender
    waiting for each ACK: messages that arrive together are committed together (one
    flush for the group), each still ACKed only after its commit."""
    port, pid = mllp
    n = 496 if smoke else 10_000
    first = 1_000_000 * (senders // 4)

    def run() -> float:
        nonlocal first
        each = n // senders
        starts = [first + k * each for k in range(senders)]
        first += n
        seconds: list[float] = []
        threads = [threading.Thread(target=lambda s=s: seconds.append(_send(port, s, each)))
                   for s in starts]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(seconds) == senders
        return time.perf_counter() - t

    benchmark.pedantic(run, rounds=1, iterations=1)
    rate, note = _measured(pid, n, run)
    benchlib.report(benchmark, f"HL7 ORM^O01 ACKed after commit, {n} from {senders} "
                    f"connections at once", subject=f"{rate:.0f} messages/s",
                    baseline="1,000/s target", ratio=rate / 1000, target=">= 1",
                    note="group commit: one flush for the messages that arrived together; "
                         + note)
