"""List groups of near-duplicate images: python scripts/duplicates.py [--threshold T] [--json] [--html FILE] (the same as `imgsim duplicates`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["duplicates", *sys.argv[1:]])
