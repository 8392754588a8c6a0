"""DVC stage `evaluate`: `lggseg evaluate` (see lggseg.pipeline.evaluate)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
