"""A standing fuzz campaign: mutated corpus files through the parsers and the archive.

Run by ``tests/test_fuzz.py`` for a bounded number of inputs with a fixed seed (CI), or
as a longer campaign from the command line::

    python -m tests.fuzz_campaign --seconds 600 --seed 7 [--markdown]

The oracle (RELIABILITY.md, "Fuzzing"): only the documented errors escape (the
:class:`~pacscore.errors.PacsError` tree for DICOM input, ``ValueError`` subclasses for
the multipart and DIMSE command parsers); no input takes longer than the per-input
deadline; every stored instance is retrieved byte for byte as sent, and ``verify``
finds nothing wrong at the end.  Every input ends in exactly one of: refused (with
the reason), stored, crashed (an undocumented exception), hung, lost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from pacscore.config import Limits
from pacscore.dicom.scan import scan
from pacscore.errors import PacsError

__all__ = ["Campaign", "Mutator", "MUTATORS", "mutants", "seeds"]

_INTERESTING_32 = (0, 1, 2, 3, 0x7F, 0xFF, 0x100, 0xFFFE, 0xFFFF, 0x10000, 0x7FFFFFFF,
                   0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_INTERESTING_16 = (0, 1, 2, 7, 8, 12, 15, 16, 17, 24, 32, 33, 255, 256, 0x7FFF, 0x8000,
                   46341, 0xFFFF)
_EVIL_TEXT = (b"../../etc/passwd", b"/abs/path", b"1.2.3;rm -rf /", b"\x00" * 7,
              b"<script>alert(1)</script>", b"A" * 600, b"1.2." + b"9" * 80, b"\xff\xfe\xfd",
              b"200&0", b"=?ISO-8859-1?", b"\x1b%G\xe2\x82\xac")
# File Meta VRs (PS3.10 Table 7.1-1), to rebuild the group with another syntax.
_META_VR = {0x0001: b"OB", 0x0002: b"UI", 0x0003: b"UI", 0x0010: b"UI", 0x0012: b"UI",
            0x0013: b"SH", 0x0016: b"AE", 0x0017: b"AE", 0x0018: b"AE", 0x0100: b"UI",
            0x0102: b"OB"}
_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
             "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
             "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201",
             "1.2.840.10008.1.2.5", "1.2.3.4.5.6", "")
_LONG = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                   b"UR", b"UT", b"UV"})


@dataclasses.dataclass(frozen=True, slots=True)
class _Element:
    """Where one top-level element lies in a seed (explicit or implicit VR LE)."""

    tag: int
    header: int
    """Offset of the tag."""
    length_at: int
    """Offset of the length field."""
    length_size: int
    """2 or 4 bytes."""
    value: int
    """Offset of the value."""
    length: int


def _elements(data: bytes) -> list[_Element]:
    """Top-level elements of a little-endian Part-10 object, from :func:`scan` (empty
    when the seed is deflated or big endian: mutators then work on raw bytes)."""
    try:
        scanned = scan(data, Limits())
    except PacsError:
        return []
    if scanned.inflated or not scanned.transfer_syntax.little_endian:
        return []
    explicit = scanned.transfer_syntax.uid != "1.2.840.10008.1.2"
    out = []
    for tag, raw in scanned.elements.items():
        if tag >> 16 == 0x0002:
            continue
        long_form = not explicit or raw.vr.encode() in _LONG
        size = 4 if long_form else 2
        header = raw.offset - (8 if not explicit or not long_form else 12)
        out.append(_Element(tag, header, raw.offset - size, size, raw.offset, raw.length))
    if scanned.pixel is not None:
        p = scanned.pixel
        out.append(_Element(0x7FE00010, p.element_start, p.value_start - 4, 4,
                            p.value_start, p.length))
    return sorted(out, key=lambda e: e.header)


Mutator = Callable[[random.Random, bytes, list[_Element]], bytes]


def _bitflip(rng: random.Random, data: bytes, _: list[_Element]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    if elems and rng.random() < 0.5:  # at an element boundary, or inside its header
        e = rng.choice(elems)
        return data[: e.header + rng.choice((0, 2, 4, 6, 8, 10))]
    return data[: rng.randrange(len(data))]


def _length(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    if not elems:
        return _bitflip(rng, data, elems)
    e = rng.choice(elems)
    out = bytearray(data)
    if e.length_size == 2:
        value = rng.choice((*_INTERESTING_16, e.length + 1, max(e.length - 1, 0)))
        struct.pack_into("<H", out, e.length_at, value)
    else:
        value = rng.choice((*_INTERESTING_32, e.length + 1, max(e.length - 1, 0),
                            len(data), len(data) * 2))
        struct.pack_into("<I", out, e.length_at, value)
    return bytes(out)


def _value(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    """Replace one short value with hostile text (lengths kept consistent)."""
    short = [e for e in elems if e.length_size == 2 or e.length < 256]
    if not short:
        return _bitflip(rng, data, elems)
    e = rng.choice(short)
    text = rng.choice(_EVIL_TEXT)
    if len(text) % 2:
        text += b" "
    if e.length_size == 2 and len(text) > 0xFFFF:
        text = text[:0xFFFE]
    fmt = "<H" if e.length_size == 2 else "<I"
    return (data[: e.length_at] + struct.pack(fmt, len(text)) + text
            + data[e.value + e.length:])


# Identifying and indexed attributes (what the index keys on).
_IDENTIFIERS = (0x00100020, 0x00100010, 0x00080050, 0x0020000D, 0x0020000E, 0x00080018,
                0x00080020, 0x00080060, 0x00100030, 0x00080016)


def _identifier(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    """Hostile text in an identifying or indexed attribute (Patient ID, UIDs, ...):
    over-long values (LMDB keys stop at 511 bytes), paths, separators, nothing."""
    targets = [e for e in elems if e.tag in _IDENTIFIERS]
    if not targets:
        return _value(rng, data, elems)
    e = rng.choice(targets)
    text = rng.choice((b"A" * 66, b"B" * 300, b"C" * 600, b"1." + b"2" * 600, b"",
                       b"../../x", b"a\\b\\c", b"*", b"?"))
    text += b" " * (len(text) % 2)
    fmt = "<H" if e.length_size == 2 else "<I"
    return (data[: e.length_at] + struct.pack(fmt, len(text)) + text
            + data[e.value + e.length:])


_PIXEL_MODULE = (0x00280002, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102,
                 0x00280103, 0x00280006)


def _pixel_module(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    """Contradict the pixel data: Rows, Columns, bits, samples, planar configuration."""
    targets = [e for e in elems if e.tag in _PIXEL_MODULE and e.length == 2]
    frames = [e for e in elems if e.tag == 0x00280008]
    if not targets and not frames:
        return _length(rng, data, elems)
    if frames and rng.random() < 0.3:
        e = frames[0]
        text = str(rng.choice((0, -1, 2, 1000, 2**31, 10**12))).encode()
        text += b" " * (len(text) % 2)
        fmt = "<H" if e.length_size == 2 else "<I"
        return (data[: e.length_at] + struct.pack(fmt, len(text)) + text
                + data[e.value + e.length:])
    e = rng.choice(targets)
    out = bytearray(data)
    struct.pack_into("<H", out, e.value, rng.choice(_INTERESTING_16))
    return bytes(out)


def _syntax(rng: random.Random, data: bytes, _: list[_Element]) -> bytes:
    """Claim another transfer syntax in the File Meta (group length rewritten)."""
    if data[128:132] != b"DICM":
        return _bitflip(rng, data, _)
    try:
        scanned = scan(data, Limits())
    except PacsError:
        return _bitflip(rng, data, _)
    meta = dict(scanned.meta)
    uid = rng.choice(_SYNTAXES).encode()
    meta[0x00020010] = uid + (b"\0" if len(uid) % 2 else b"")
    body = b""
    for tag in sorted(meta):
        if tag == 0x00020000:
            continue
        vr = _META_VR.get(tag & 0xFFFF, b"UN")
        value = meta[tag]
        if vr in _LONG:
            body += struct.pack("<HH2sHI", 2, tag & 0xFFFF, vr, 0, len(value)) + value
        else:
            body += struct.pack("<HH2sH", 2, tag & 0xFFFF, vr, len(value)) + value
    group = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
    return data[:132] + group + body + data[scanned.dataset_start:]


def _fragments(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    """Break the item table of encapsulated pixel data (lengths, delimiters)."""
    start = data.rfind(b"\xe0\x7f\x10\x00")
    if start < 0:
        return _length(rng, data, elems)
    items = [i for i in range(start, len(data) - 8)
             if data[i:i + 4] == b"\xfe\xff\x00\xe0"][:64]
    if not items:
        return _truncate(rng, data, elems)
    i = rng.choice(items)
    out = bytearray(data)
    choice = rng.random()
    if choice < 0.6:
        struct.pack_into("<I", out, i + 4, rng.choice(_INTERESTING_32))
    elif choice < 0.8:  # a sequence delimiter in the middle
        out[i:i + 8] = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    else:  # drop the end of the item list
        return bytes(out[: i + 8])
    return bytes(out)


def _splice(rng: random.Random, data: bytes, _: list[_Element]) -> bytes:
    """Duplicate or delete a chunk."""
    a = rng.randrange(132, max(len(data), 133))
    b = min(len(data), a + rng.choice((1, 2, 4, 8, 64, 4096)))
    if rng.random() < 0.5:
        return data[:b] + data[a:b] + data[b:]
    return data[:a] + data[b:]


def _deep(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    """Sequences nested 100 to 2,000 deep, closed or not (undefined lengths)."""
    depth = rng.choice((100, 300, 1000, 2000))
    opening = (struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
               + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nest = opening * depth + (closing * depth if rng.random() < 0.5 else b"")
    meta = (b"\0" * 128 + b"DICM"
            + struct.pack("<HH2sHI", 2, 0, b"UL", 4, 28)
            + struct.pack("<HH2sH", 2, 0x10, b"UI", 20) + b"1.2.840.10008.1.2.1\0")
    sop = struct.pack("<HH2sH", 8, 0x18, b"UI", 8) + b"1.2.3.4\0"
    return meta + sop + nest


def _bomb(rng: random.Random, data: bytes, elems: list[_Element]) -> bytes:
    """A deflated data set that inflates far beyond its size (zeros)."""
    return _bomb_of(rng.choice((1 << 20, 64 << 20, 600 << 20)))


@functools.lru_cache(maxsize=4)
def _bomb_of(size: int) -> bytes:
    element = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, size)
    inflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = inflater.compress(element)
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        body += inflater.compress(chunk)
    body += inflater.flush()
    uid = b"1.2.840.10008.1.2.1.99"
    meta = (b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, 8 + len(uid))
            + struct.pack("<HH2sH", 2, 0x10, b"UI", len(uid)) + uid)
    return meta + body


MUTATORS: dict[str, Mutator] = {
    "bitflip": _bitflip, "truncate": _truncate, "length": _length, "value": _value,
    "pixel_module": _pixel_module, "syntax": _syntax, "fragments": _fragments,
    "splice": _splice, "deep": _deep, "bomb": _bomb, "identifier": _identifier,
}
# Weights: the structural mutators find more than random bits.
_WEIGHTS = {"bitflip": 3, "truncate": 3, "length": 4, "value": 3, "pixel_module": 4,
            "syntax": 2, "fragments": 3, "splice": 2, "deep": 1, "bomb": 1,
            "identifier": 5}


def seeds(corpus: Path, max_bytes: int = 1 << 21, per_folder: int = 2) -> list[Path]:
    """Seed files: up to ``per_folder`` of each corpus folder, at most ``max_bytes``
    each (sorted: the same seeds for the same corpus)."""
    picked: dict[str, list[Path]] = {}
    for path in sorted(corpus.rglob("*.dcm")):
        if path.stat().st_size > max_bytes:
            continue
        folder = str(path.parent.relative_to(corpus))
        if len(picked.setdefault(folder, [])) < per_folder:
            picked[folder].append(path)
    return [p for group in picked.values() for p in group]


def mutants(seed_files: list[Path], rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Endless (name, mutated bytes): a seed, one to three mutations."""
    cache: dict[Path, tuple[bytes, list[_Element]]] = {}
    names = list(_WEIGHTS)
    weights = [_WEIGHTS[n] for n in names]
    while True:
        path = rng.choice(seed_files)
        if path not in cache:
            data = path.read_bytes()
            cache[path] = (data, _elements(data))
        data, elems = cache[path]
        applied = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            name = rng.choices(names, weights)[0]
            before = len(data)
            data = MUTATORS[name](rng, data, elems) or b"\0"
            if len(data) != before or name == "syntax":
                elems = _elements(data)
            applied.append(name)
        yield f"{path.parent.name}/{path.name}+{'+'.join(applied)}", data


class _DeadlineError(Exception):
    """The per-input deadline passed."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise _DeadlineError


@dataclasses.dataclass
class Campaign:
    """Counts of one run; ``findings`` holds each crash, hang and loss with its input."""

    tried: int = 0
    refused: int = 0
    stored: int = 0
    crashed: int = 0
    hung: int = 0
    lost: int = 0
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    findings: list[dict[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def finding(self, kind: str, name: str, detail: str) -> None:
        self.findings.append({"kind": kind, "input": name, "detail": detail[-2000:]})

    def row(self, target: str) -> str:
        return (f"| {target} | {self.tried} | {self.refused} | {self.stored} | "
                f"{self.crashed} | {self.hung} | {self.lost} | {self.seconds:.0f} s |")


def _bounded(fn: Callable[[], Any], deadline: float) -> Any:
    """Run ``fn`` with a wall-clock deadline (SIGALRM; main thread only)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _inputs(corpus: Path, seed: int, count: int | None, seconds: float | None
            ) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    stop = time.monotonic() + seconds if seconds else None
    for i, item in enumerate(mutants(seeds(corpus), rng)):
        if (count is not None and i >= count) or (stop and time.monotonic() > stop):
            return
        yield item


def fuzz_parser(corpus: Path, *, seed: int, count: int | None = None,
                seconds: float | None = None, deadline: float = 10.0) -> Campaign:
    """``scan`` + ``read_header`` (the structural parser and the header reader)."""
    from pacscore.dicom.header import read_header

    limits = Limits()
    result = Campaign()
    started = time.monotonic()
    for name, data in _inputs(corpus, seed, count, seconds):
        result.tried += 1
        try:
            _bounded(lambda d=data, n=name: read_header(scan(d, limits, n), limits, n, ""),
                     deadline)
            result.stored += 1  # parsed: accepted by the parser
        except _DeadlineError:
            result.hung += 1
            result.finding("hung", name, f"over {deadline} s")
        except PacsError as exc:
            result.refused += 1
            result.reasons[type(exc).__name__] += 1
        except Exception:
            result.crashed += 1
            result.finding("crashed", name, traceback.format_exc())
    result.seconds = time.monotonic() - started
    return result


def fuzz_archive(corpus: Path, archive_dir: Path, *, seed: int, count: int | None = None,
                 seconds: float | None = None, deadline: float = 30.0) -> Campaign:
    """The whole ingest pipeline (``Archive.store``), then every stored instance read
    back byte for byte and ``verify``."""
    from pacscore import Archive, ArchiveConfig

    result = Campaign()
    started = time.monotonic()
    sent: dict[str, tuple[str, bytes]] = {}
    with Archive(archive_dir, ArchiveConfig(fsync=False)) as archive:
        for name, data in _inputs(corpus, seed, count, seconds):
            result.tried += 1
            try:
                stored = _bounded(lambda d=data, n=name: archive.store(d, source=n), deadline)
            except _DeadlineError:
                result.hung += 1
                result.finding("hung", name, f"over {deadline} s")
                continue
            except PacsError as exc:
                result.refused += 1
                result.reasons[type(exc).__name__] += 1
                continue
            except Exception:
                result.crashed += 1
                result.finding("crashed", name, traceback.format_exc())
                continue
            result.stored += 1
            if stored.status == "stored":
                sent[stored.sop_instance_uid] = (name, data)
        for sop, (name, data) in sent.items():
            try:
                back = archive.get(sop, "original")
            except Exception as exc:
                result.lost += 1
                result.finding("lost", name, f"{sop}: {type(exc).__name__}: {exc}")
                continue
            if back != data:
                result.lost += 1
                result.finding("lost", name, f"{sop}: original differs from what was sent")
        for sop, reason in archive.verify().failed:
            result.lost += 1
            result.finding("lost", sent.get(sop, ("?", b""))[0], f"verify: {sop}: {reason}")
    result.seconds = time.monotonic() - started
    return result


def _multipart_mutants(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    boundary = b"fuzzBOUNDARY"
    parts = [b"\0" * rng.randrange(0, 300), b"DICM" * rng.randrange(1, 50), b"--fuzz\r\n"]
    good = b"".join(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
                    + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"
    while True:
        data = good
        for _ in range(rng.choice((1, 2, 3))):
            data = rng.choice((_bitflip, _truncate, _splice))(rng, data + b"\0" * 133, [])
        yield "multipart", data


def fuzz_multipart(*, seed: int, count: int) -> Campaign:
    """The STOW-RS multipart/related parser: only its ValueError subclasses escape."""
    from pacscore.services.dicomweb.multipart import parse_related

    result = Campaign()
    started = time.monotonic()
    rng = random.Random(seed)

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 97):
            yield data[i:i + 97]

    with tempfile.TemporaryDirectory() as tmp:
        for _, (name, data) in zip(range(count), _multipart_mutants(rng), strict=False):
            result.tried += 1
            try:
                parts = asyncio.run(parse_related(chunks(data), "fuzzBOUNDARY", 1 << 20,
                                                  Path(tmp)))
                result.stored += 1
                for p in parts:
                    p.path.unlink(missing_ok=True)
            except ValueError as exc:
                result.refused += 1
                result.reasons[type(exc).__name__] += 1
            except Exception:
                result.crashed += 1
                result.finding("crashed", name, traceback.format_exc())
        left = list(Path(tmp).iterdir())
        if left:
            result.lost += len(left)
            result.finding("lost", "multipart", f"{len(left)} part files left behind")
    result.seconds = time.monotonic() - started
    return result


_HEADER = ("| target | inputs tried | refused | accepted/stored | crashed | hung | lost "
           "| time |\n|---|---:|---:|---:|---:|---:|---:|---:|")


def main(argv: list[str] | None = None) -> int:
    """Command line: a longer campaign; prints a table (Markdown with --markdown) and
    the findings as JSON lines on stderr; exit 1 when anything crashed, hung or was
    lost."""
    from tests.conftest import corpus_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="per target")
    p.add_argument("--seed", type=int, default=20261203)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    corpus = corpus_root()
    if corpus is None:
        print("no corpus: set PACSCORE_CORPUS", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "scan + read_header": fuzz_parser(corpus, seed=args.seed, seconds=args.seconds),
            "Archive.store + get + verify": fuzz_archive(
                corpus, Path(tmp) / "a", seed=args.seed, seconds=args.seconds),
            "STOW-RS multipart parser": fuzz_multipart(seed=args.seed,
                                                       count=int(args.seconds * 200)),
        }
    print(_HEADER if args.markdown else "target tried refused stored crashed hung lost")
    bad = 0
    for target, run in runs.items():
        print(run.row(target) if args.markdown else
              f"{target}: {run.tried} {run.refused} {run.stored} {run.crashed} {run.hung} "
              f"{run.lost}")
        for f in run.findings:
            print(json.dumps({"target": target, **f}), file=sys.stderr)
        bad += run.crashed + run.hung + run.lost
    if args.markdown:  # what the refusals were, most frequent first
        print()
        for target, run in runs.items():
            if run.reasons:
                print(f"- {target} refused: " + ", ".join(
                    f"{name} {n}" for name, n in run.reasons.most_common()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
