"""Fit a folder of images: python scripts/fit.py DATA_DIR [--artifacts DIR] [...] (the same as `imgsim fit`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["fit", *sys.argv[1:]])
