"""Latency and memory of the named OIS models: embedding time, per-click time, peak memory.

    python benchmarks/latency.py --models default ois-tiny-cnn --device all --json benchmarks/latency.json

Same as ``napari-ois bench``; prints a table and writes JSON.
"""

import sys

from napari_ois.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
