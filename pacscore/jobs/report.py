"""Job reports: a table for people, one JSON object for scripts, an HTML page with a
chart of bytes before/after per modality and codec."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from .compress import FileResult

__all__ = ["JobReport"]


@dataclass(slots=True)
class _Group:
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, r: FileResult) -> None:
        self.files += 1
        self.bytes_in += r.bytes_in
        self.bytes_out += r.bytes_out

    @property
    def ratio(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0


_LISTED = 50
"""Files listed per category in the table (``--json`` lists them all)."""


@dataclass(slots=True)
class JobReport:
    """Running totals of a job (constant memory but for the lists of files)."""

    seconds: float = 0.0
    """Wall-clock time of this run."""
    counts: dict[str, int] = field(default_factory=dict)
    """Files per status."""
    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    """Totals per (modality, codec) of the files with an output."""
    total: _Group = field(default_factory=_Group)
    """Totals over every file with an output."""
    raw_bytes: int = 0
    """Native pixel bytes encoded by this run."""
    run_bytes_in: int = 0
    """Bytes of the files this run did (the rates' basis)."""
    resumed: int = 0
    """Files done by an earlier run of the job (from its journal; counted above)."""
    failures: list[dict[str, str]] = field(default_factory=list)
    """Files refused by the archive rules (copied unchanged), with the reason."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Files that are not DICOM (copied unchanged), with the reason."""
    unfinished: list[dict[str, str]] = field(default_factory=list)
    """Files with no output (not journalled: ``--resume`` does them), with the reason."""
    auto_choices: dict[str, str] = field(default_factory=dict)
    """``auto``: codec chosen per series."""

    def add(self, r: FileResult) -> None:
        """Account for one file."""
        self.counts[r.status] = self.counts.get(r.status, 0) + 1
        listed = {"failed": self.failures, "other": self.skipped,
                  "unfinished": self.unfinished}.get(r.status)
        if listed is not None:
            listed.append({"path": r.rel, "reason": r.reason or ""})
        self.resumed += r.resumed
        if r.status == "unfinished":
            return
        self.groups.setdefault((r.modality, r.codec), _Group()).add(r)
        self.total.add(r)
        if not r.resumed:
            self.raw_bytes += r.raw_bytes
            self.run_bytes_in += r.bytes_in
        if r.status == "compressed" and r.series_uid:
            self.auto_choices.setdefault(r.series_uid, r.codec)

    @property
    def files(self) -> int:
        """Files accounted for (each in exactly one status)."""
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        """2 when some files are unfinished (run again with ``--resume``), 1 when some
        failed (copied unchanged), else 0."""
        return 2 if self.unfinished else 1 if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "files": self.files,
            "status": dict(sorted(self.counts.items())),
            "resumed": self.resumed,
            "bytes_in": self.total.bytes_in,
            "bytes_out": self.total.bytes_out,
            "ratio": round(self.total.ratio, 4),
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.run_bytes_in / 1e6 / self.seconds, 2)
            if self.seconds else 0.0,
            "raw_pixel_mb_per_s": round(self.raw_bytes / 1e6 / self.seconds, 2)
            if self.seconds else 0.0,
            "groups": [
                {"modality": m, "codec": c, "files": g.files, "bytes_in": g.bytes_in,
                 "bytes_out": g.bytes_out, "ratio": round(g.ratio, 4)}
                for (m, c), g in sorted(self.groups.items())
            ],
            "failures": self.failures,
            "skipped": self.skipped,
            "unfinished": self.unfinished,
            "codec_per_series": self.auto_choices,
        }

    def to_text(self) -> str:
        """The table printed at the end of a job."""
        lines = [f"{'modality':10s} {'codec':9s} {'files':>6s} {'MB before':>10s} "
                 f"{'MB after':>9s} {'ratio':>6s}"]
        for (m, c), g in sorted(self.groups.items()):
            lines.append(f"{m[:10]:10s} {c:9s} {g.files:6d} {g.bytes_in / 1e6:10.1f} "
                         f"{g.bytes_out / 1e6:9.1f} {g.ratio:6.2f}")
        t = self.total
        rate = self.run_bytes_in / 1e6 / self.seconds if self.seconds else 0.0
        lines.append(f"{'total':10s} {'':9s} {t.files:6d} {t.bytes_in / 1e6:10.1f} "
                     f"{t.bytes_out / 1e6:9.1f} {t.ratio:6.2f}")
        earlier = f" ({self.resumed} done by an earlier run)" if self.resumed else ""
        lines.append(f"{self.files} files{earlier}; {self.seconds:.1f} s, {rate:.1f} MB/s; "
                     + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))
        for title, items in (("failed (copied unchanged)", self.failures),
                             ("not DICOM (copied unchanged)", self.skipped),
                             ("unfinished (run again with --resume)", self.unfinished)):
            lines += [f"  {title}: {f['path']}: {f['reason']}" for f in items[:_LISTED]]
            if len(items) > _LISTED:
                lines.append(f"  ... and {len(items) - _LISTED} more {title.split()[0]} "
                             f"(all listed by --json)")
        return "\n".join(lines)

    def to_html(self) -> str:
        """A standalone page with an SVG bar chart (no scripts, every value escaped)."""
        rows = sorted(self.groups.items())
        peak = max((g.bytes_in for _, g in rows), default=1) or 1
        bar_h, gap, width = 14, 10, 520
        svg = []
        for i, ((m, c), g) in enumerate(rows):
            y = i * (2 * bar_h + gap)
            label = html.escape(f"{m} / {c}")
            svg.append(f'<text x="0" y="{y + bar_h}" font-size="12">{label}</text>')
            for j, (value, colour) in enumerate(((g.bytes_in, "#9aa5b1"),
                                                 (g.bytes_out, "#2f80ed"))):
                w = max(1, int(width * value / peak))
                svg.append(f'<rect x="160" y="{y + j * bar_h}" width="{w}" '
                           f'height="{bar_h - 2}" fill="{colour}"/>')
                svg.append(f'<text x="{165 + w}" y="{y + j * bar_h + bar_h - 3}" '
                           f'font-size="11">{value / 1e6:.1f} MB</text>')
        height = max(len(rows) * (2 * bar_h + gap), 20)
        table = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{html.escape(c)}</td><td>{g.files}</td>"
            f"<td>{g.bytes_in / 1e6:.1f}</td><td>{g.bytes_out / 1e6:.1f}</td>"
            f"<td>{g.ratio:.2f}</td></tr>" for (m, c), g in rows)
        fails = "".join(f"<li>{html.escape(f['path'])}: {html.escape(f['reason'])}</li>"
                        for f in self.failures)
        unfinished = "".join(f"<li>{html.escape(f['path'])}: {html.escape(f['reason'])}</li>"
                             for f in self.unfinished)
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>pacscore job report"
            "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
            "text-align:right}</style></head><body><h1>pacscore job report</h1>"
            f"<p>{self.total.files} files, {self.total.bytes_in / 1e6:.1f} MB &rarr; "
            f"{self.total.bytes_out / 1e6:.1f} MB (ratio {self.total.ratio:.2f}) in "
            f"{self.seconds:.1f} s. Grey: before; blue: after.</p>"
            f"<svg width='{width + 260}' height='{height}' role='img' "
            f"aria-label='bytes before and after per modality and codec'>{''.join(svg)}</svg>"
            "<table><tr><th>modality</th><th>codec</th><th>files</th><th>MB before</th>"
            f"<th>MB after</th><th>ratio</th></tr>{table}</table>"
            f"<h2>Failures (copied unchanged)</h2><ul>{fails or '<li>none</li>'}</ul>"
            + (f"<h2>Unfinished (no output: run the job again with --resume)</h2>"
               f"<ul>{unfinished}</ul>" if unfinished else "") +
            "</body></html>")
