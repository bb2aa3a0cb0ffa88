"""Serve the search page and API: python scripts/serve.py [--artifacts DIR] [--host 127.0.0.1] [--port 8000] (the same as `imgsim serve`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from any folder, installed or not
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
