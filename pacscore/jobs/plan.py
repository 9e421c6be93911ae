"""``pacscore plan``: a dry run that samples a tree and predicts a compress job.

Files are sampled with a reservoir (constant memory, one pass), each sample goes
through the real pipeline with every codec (encode *and* verify, as the job will),
and the measured ratios and speeds are scaled to the whole tree.  Nothing is written.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..config import ArchiveConfig
from ..dicom.scan import looks_like_dicom
from ..errors import PacsError
from ..ingest.prepare import encode_object
from .walk import walk_files

__all__ = ["PLAN_CODECS", "plan"]

PLAN_CODECS: tuple[str, ...] = ("htj2k", "jpegls", "j2k")


def _sample(roots: Sequence[str], k: int, seed: int) -> tuple[list[tuple[str, int]], int, int]:
    rng = random.Random(seed)
    reservoir: list[tuple[str, int]] = []
    files = total = 0
    for path, _, size in walk_files(roots):
        files += 1
        total += size
        if len(reservoir) < k:
            reservoir.append((path, size))
        elif (j := rng.randrange(files)) < k:
            reservoir[j] = (path, size)
    return reservoir, files, total


def plan(roots: Sequence[str], config: ArchiveConfig, *, workers: int, sample: int = 24,
         seed: int = 0, codecs: Sequence[str] = PLAN_CODECS) -> dict[str, Any]:
    """Predict size after, time and savings per modality for each codec."""
    picked, files, total = _sample(roots, sample, seed)
    per: dict[str, list[float]] = {}  # codec -> in, out, seconds, raw
    mods: dict[str, dict[str, list[float]]] = {}  # modality -> codec -> in, out
    sampled_bytes = 0
    for path, size in picked:
        with open(path, "rb") as f:
            data = f.read()
        if not looks_like_dicom(data[:132]):
            continue
        sampled_bytes += size
        for name in codecs:
            start = time.perf_counter()
            out, modality, raw = size, "?", 0
            try:
                enc = encode_object(data, path, replace(config, codec=name))
            except PacsError:
                pass
            else:
                modality = str(enc.header.attributes.get("Modality") or "?")
                layout = enc.header.layout
                if enc.codec is not None and enc.parts is not None and layout is not None:
                    out = sum(map(len, enc.frames)) + len(enc.parts.pack())
                    raw = layout.frame_bytes * layout.frames
            seconds = time.perf_counter() - start
            acc = per.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            for i, v in enumerate((size, out, seconds, raw)):
                acc[i] += v
            m = mods.setdefault(modality, {}).setdefault(name, [0.0, 0.0])
            m[0] += size
            m[1] += out
    scale = total / sampled_bytes if sampled_bytes else 0.0
    parallel = max(workers, 1)
    result_codecs: dict[str, dict[str, Any]] = {}
    for name, (b_in, b_out, secs, raw_in) in per.items():
        result_codecs[name] = {
            "ratio": round(b_in / b_out, 4) if b_out else 0.0,
            "predicted_bytes_after": int(b_out * scale),
            "predicted_seconds": round(secs * scale / parallel, 1),
            "sample_mb_per_s": round(b_in / 1e6 / secs, 2) if secs else 0.0,
            "raw_pixel_mb_per_s": round(raw_in / 1e6 / secs, 2) if secs else 0.0,
        }
    modalities = {
        mod: {name: {"predicted_bytes_before": int(v[0] * scale),
                     "predicted_bytes_after": int(v[1] * scale),
                     "predicted_savings": int((v[0] - v[1]) * scale),
                     "ratio": round(v[0] / v[1], 4) if v[1] else 0.0}
              for name, v in by_codec.items()}
        for mod, by_codec in sorted(mods.items())
    }
    best = min(result_codecs, key=lambda n: result_codecs[n]["predicted_bytes_after"],
               default=None)
    return {"files": files, "bytes": total, "sampled_files": len(picked),
            "sampled_bytes": sampled_bytes, "workers": parallel, "codecs": result_codecs,
            "modalities": modalities, "smallest": best}
