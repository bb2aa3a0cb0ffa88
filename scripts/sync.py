"""Rescan the fitted folders and bring the index in step: python scripts/sync.py [--artifacts DIR] (the same as `imgsim sync`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["sync", *sys.argv[1:]])
