"""Find the indexed images most like a query: python scripts/predict.py (--file PATH | --url URL) [-n N] [...] (the same as `imgsim predict`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
