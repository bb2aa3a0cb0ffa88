"""Write one benchmark's section of docs/BENCHMARKS.md (or docs/QUALITY.md), leaving the other sections as they are."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
QUALITY_MD = BENCHMARKS_MD.with_name("QUALITY.md")
_HEADER = "# Benchmarks\n\nWritten by the scripts in `benchmarks/`; each section says how to re-run it.\n"


def machine() -> str:
    """A one-line description of the machine a figure was measured on."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def rss_mb(kind: str = "VmRSS") -> float:
    """This process's resident memory in MB (VmRSS), or its part in anonymous memory (RssAnon) or in
    mapped files' pages (RssFile: page cache, which the kernel takes back under pressure)."""
    return int(Path("/proc/self/status").read_text().split(f"{kind}:")[1].split()[0]) / 1024


def sample_fit(folder: Path) -> Path:
    """``folder``, holding a default fit of data/sample (made here when it holds none)."""
    from pipeline.bundle.layout import has_bundle

    if not has_bundle(folder):
        root = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, str(root / "scripts" / "fit.py"), str(root / "data" / "sample"),
                        "--artifacts", str(folder)], check=True, cwd=root, stdout=subprocess.DEVNULL)
    return folder


def write_section(name: str, markdown: str, document: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between ``<!-- name -->`` markers of ``document``."""
    text = document.read_text() if document.exists() else _HEADER
    block = f"<!-- {name} -->\n{markdown.strip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    document.parent.mkdir(exist_ok=True)
    document.write_text(text)
