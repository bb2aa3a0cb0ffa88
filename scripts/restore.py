"""Make a kept earlier bundle the current one again: python scripts/restore.py [--list] [BUNDLE] (the same as `imgsim restore`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["restore", *sys.argv[1:]])
