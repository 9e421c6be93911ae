"""Bulk jobs for archive operators: compress trees, plan them, resumable and measured."""

from .compress import CompressTask, FileResult, compress_one, run_compress
from .engine import run_tasks
from .plan import plan
from .report import JobReport
from .walk import count_files, walk_files

__all__ = ["CompressTask", "FileResult", "JobReport", "compress_one", "count_files", "plan",
           "run_compress", "run_tasks", "walk_files"]
