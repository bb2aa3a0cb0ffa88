"""Drop images from the index: python scripts/remove.py PATH_OR_ID... [--artifacts DIR] (the same as `imgsim remove`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["remove", *sys.argv[1:]])
