"""DVC stage `train`: `lggseg train` (see lggseg.pipeline.train)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
