"""Add the LiteRT export to a bundle made before format 6: python scripts/upgrade.py [--artifacts DIR] (the same as `imgsim upgrade`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["upgrade", *sys.argv[1:]])
