"""The team's labelled dev sets (beside the project, in ../shared/data) and a default fit of each, made once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SETS = ("clothing10", "cifar10-test", "caltech101", "flowers5")


def default_fit(name: str, workdir: Path) -> Path:
    """The artifacts folder of a fit of the set ``name`` with the default settings, in ``workdir``:
    made by ``scripts/fit.py`` unless one is there already."""
    sys.path.insert(0, str(ROOT))
    from pipeline.bundle.layout import has_bundle

    artifacts = workdir / name
    if not has_bundle(artifacts):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(SHARED / name), "--artifacts",
                        str(artifacts)], cwd=ROOT, check=True, capture_output=True)
    return artifacts
