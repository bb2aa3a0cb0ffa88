"""python -m pipeline.cli: the imgsim command."""

from . import main

main()
