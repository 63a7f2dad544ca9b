#!/usr/bin/env python
"""Train a UDVD: the same code and options as `udvd train` (`python scripts/train.py --help`).

Under torchrun for several processes: `torchrun --nproc_per_node 2 scripts/train.py --data ... --out ...`.
"""

import sys

from udvd_triton.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
