"""DVC stage `index`: `lggseg index` (see lggseg.pipeline.index)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
