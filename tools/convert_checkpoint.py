"""Thin wrapper: `python tools/convert_checkpoint.py hf-to-mcore --hf DIR --out DIR` == `megatron-s1 convert ...`."""
import sys

from megatron_s1.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
