"""DVC stage `download`: `lggseg download` (see lggseg.pipeline.download)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
