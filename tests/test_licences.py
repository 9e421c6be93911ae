"""Every runtime dependency of pacscore (Apache-2.0), transitively, is permissively
licensed: no GPL/AGPL/LGPL, and no file-level copyleft either (MPL-2.0, EPL), which
would take a deliberate entry in the allow-list below.

The installed ``pacscore`` distribution's requirements are walked (extras left out:
``test`` and ``dask`` are not what a user installs with pacscore); each package's
licence is read from its metadata: ``License-Expression`` (PEP 639, SPDX), else its
``License ::`` classifiers and ``License`` field, every one of which must be allowed.
"""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement

# SPDX identifiers of permissive licences.
ALLOWED = frozenset({
    "MIT", "MIT-0", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "Apache-2.0", "PSF-2.0",
    "Python-2.0", "ISC", "HPND", "Zlib", "CC0-1.0", "Unlicense", "OLDAP-2.8",
    "LLVM-exception",  # Apache-2.0 WITH LLVM-exception (llvmlite)
})

# What packages write where no SPDX identifier is given, mapped to SPDX.
TEXTS = {
    "mit": "MIT", "mit license": "MIT", "bsd": "BSD-3-Clause", "bsd license": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause", "new bsd license": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause", "bsd 3-clause": "BSD-3-Clause",
    "apache 2.0": "Apache-2.0", "apache-2.0": "Apache-2.0",
    "apache software license": "Apache-2.0", "apache license 2.0": "Apache-2.0",
    "isc license (iscl)": "ISC", "python software foundation license": "PSF-2.0",
    "the unlicense (unlicense)": "Unlicense", "zlib/libpng license": "Zlib",
    "gpl v3.0": "GPL-3.0", "gnu general public license v3 (gplv3)": "GPL-3.0",
    "gnu general public license v2 (gplv2)": "GPL-2.0",
    "gnu affero general public license v3": "AGPL-3.0",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "other/proprietary license": "LicenseRef-Proprietary",
}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_dependencies(root: str = "pacscore") -> dict[str, metadata.Distribution]:
    """Installed distributions ``root`` needs at run time, transitively, by name."""
    found: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if _key(name) in found:
            continue
        dist = metadata.distribution(name)
        found[_key(name)] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _spdx(expression: str) -> list[list[str]]:
    """An SPDX expression as alternatives (OR) of identifiers all needed (AND, WITH)."""
    flat = expression.replace("(", " ").replace(")", " ")
    return [re.split(r"\s+(?:AND|WITH)\s+", alt.strip())
            for alt in re.split(r"\s+OR\s+", flat) if alt.strip()]


def problems(dist: metadata.Distribution) -> list[str]:
    """Why ``dist``'s licence is not allowed (empty when it is)."""
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        if _allowed(expression):
            return []
        return [f"License-Expression {expression!r}"]
    declared = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                if c.startswith("License ::") and c != "License :: OSI Approved"]
    field = (meta.get("License") or "").strip()
    if field and "\n" not in field and len(field) < 80:
        declared.append(field)
    if not declared:
        return ["no licence declared"]
    return [repr(text) for text in declared
            if not _allowed(TEXTS.get(text.lower(), text))]


def _allowed(expression: str) -> bool:
    return any(all(i in ALLOWED for i in alt) for alt in _spdx(expression))


def test_every_runtime_dependency_is_permissively_licensed() -> None:
    deps = runtime_dependencies()
    assert "numpy" in deps and "pydicom" in deps  # the walk reaches the dependencies
    refused = {f"{d.metadata['Name']} {d.version}": why for name, d in deps.items()
               if name != "pacscore" and (why := problems(d))}
    assert refused == {}, "runtime dependencies with a licence not on the allow-list: " + \
        "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(refused.items()))


def test_build_only_tools_are_not_runtime_dependencies() -> None:
    """grpcio-tools generates the gRPC modules at build time (setup.py build_grpc)."""
    assert "grpcio-tools" not in runtime_dependencies()


@pytest.mark.parametrize(("text", "allowed"), [
    ("MIT", True), ("BSD-2-Clause AND Apache-2.0 WITH LLVM-exception", True),
    ("Apache-2.0 OR BSD-2-Clause", True), ("GPL-3.0-or-later", False),
    ("MPL-2.0", False), ("LGPL-2.1-only OR MIT", True), ("AGPL-3.0", False)])
def test_spdx_expressions(text: str, allowed: bool) -> None:
    assert _allowed(text) is allowed
