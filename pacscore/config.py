"""Archive settings: one frozen dataclass, passed in explicitly, never global."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_BUDGET", "ArchiveConfig", "Limits"]

DEFAULT_BUDGET = 0.25
"""``--codec auto``: minimum encode speed relative to the fastest candidate.  Measured
here: JPEG-LS runs at ~0.5x HTJ2K, JPEG 2000 at ~0.1x; 0.25 admits JPEG-LS with room
for timing noise on a busy machine and keeps JPEG 2000 out."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds checked before anything is allocated (RELIABILITY items 4, 6, 9, 13)."""

    max_file_bytes: int = 4 * 1024**3
    """Largest Part-10 object accepted."""
    max_frame_pixels: int = 1 << 28
    """Rows x Columns of one frame (256 Mpixel covers whole-slide tiles and huge DX)."""
    max_pixel_bytes: int = 4 * 1024**3
    """Rows x Columns x Samples x Bytes x Frames of one object."""
    max_sequence_depth: int = 64
    """Nesting depth of sequences."""
    max_inflated_bytes: int = 512 * 1024**2
    """Size a deflated data set may inflate to (it is held in memory whole while it is
    read).  512 MiB holds a 512x512x1000 16-bit volume; deflate is used for reports,
    waveforms and small images, rarely for big ones (their pixels barely deflate)."""
    max_inflate_ratio: int = 1000
    """Inflated size / deflated size above which a deflated object is a bomb."""
    inflate_budget_bytes: int = 1024**3
    """Bytes all inflated data sets alive at once in one process may take (each
    reserves its cap before inflating and holds its size while it is in use; others
    wait).  Stores run in worker processes: the host's bound is this times the
    processes (workers + the server)."""


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """How an :class:`~pacscore.Archive` stores what it receives."""

    codec: str = "htj2k"
    """Lossless codec for new frames: ``htj2k``, ``jpegls``, ``j2k``, ``rle`` or ``keep``."""
    transcode_compressed: bool = False
    """Re-encode input that is already losslessly compressed (after verification).

    Off by default: such input is kept byte for byte, which is what most sites want
    (decoding JPEG 2000 input costs ~15 MB/s per core)."""
    commit_batch: int = 32
    """Instances per group commit in bulk stores."""
    lmdb_map_size: int = 1 << 34
    """Initial LMDB map size in bytes (sparse file; grown on MapFullError)."""
    prepare_workers: int = 0
    """Worker processes for single stores from paths (network front ends set it to the
    core count: the codec libraries hold the GIL, so threads alone use one core)."""
    fsync: bool = True
    """Make frames and index durable before acknowledging (turn off only in tests)."""
    limits: Limits = Limits()
    """Input limits."""
