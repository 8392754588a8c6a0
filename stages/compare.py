"""DVC stage `compare`: `lggseg compare` (see lggseg.pipeline.compare)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
