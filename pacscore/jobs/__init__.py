"""Bulk jobs for archive operators: compress trees, plan them, resumable and measured.

Each name is imported on first use (the command line lists its options without
loading the codecs).
"""

from typing import TYPE_CHECKING

from .._lazy import attributes

if TYPE_CHECKING:
    from ..workers import run_tasks
    from .compress import CompressTask, FileResult, compress_one, run_compress
    from .plan import plan
    from .report import JobReport
    from .walk import count_files, walk_files

__all__ = ["CompressTask", "FileResult", "JobReport", "compress_one", "count_files", "plan",
           "run_compress", "run_tasks", "walk_files"]

__getattr__, __dir__ = attributes(__name__, {
    "CompressTask": ".compress", "FileResult": ".compress", "compress_one": ".compress",
    "run_compress": ".compress", "run_tasks": "..workers", "plan": ".plan",
    "JobReport": ".report", "count_files": ".walk", "walk_files": ".walk",
})
