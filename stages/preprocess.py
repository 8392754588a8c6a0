"""DVC stage `preprocess`: `lggseg preprocess` (see lggseg.pipeline.preprocess)."""

import sys

from lggseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
