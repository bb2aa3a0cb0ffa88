"""Measure retrieval quality on a labelled folder: python scripts/evaluate.py DATA_DIR [-k 10] [--json] (the same as `imgsim evaluate`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
