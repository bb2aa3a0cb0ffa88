"""Write the HTML report of a fit: python scripts/report.py [--artifacts DIR] [--out report.html] (the same as `imgsim report`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["report", *sys.argv[1:]])
