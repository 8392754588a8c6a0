"""DVC stage `split`: `lggseg split` (see lggseg.pipeline.split)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))
