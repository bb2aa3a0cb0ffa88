"""Add new images to a fitted index without retraining: python scripts/add.py NEW_DIR [--artifacts DIR] (the same as `imgsim add`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["add", *sys.argv[1:]])
