"""Make the reference-like tokenized sample datasets (seeded, reproducible).

    python data_samples/make_samples.py                 # the committed sample: data_samples/reference_like
    python data_samples/make_samples.py --full          # the full 99,388-row set: data_samples/reference_full
                                                        # (about 133M tokens, 1 GB; not committed)

Lengths: log-normal, sigma 1.0, mean 1,334 (see data_samples/synthetic.py). The committed sample adds two rows from the
tail past 20,000 tokens so that every overflow policy has something to do.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from data_samples.synthetic import REFERENCE_ROWS, write_reference_like  # noqa: E402

log = logging.getLogger("make_samples")

SAMPLE_ROWS = 500
SAMPLE_TAIL = 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help=f"write the full {REFERENCE_ROWS:,}-row set")
    p.add_argument("--rows", type=int, help="rows (default: 500, or 99,388 with --full)")
    p.add_argument("--tail", type=int, help="extra rows past 20,000 tokens (default: 2, or 0 with --full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, help="output shards (default: 1, or 4 with --full)")
    p.add_argument("--output", help="output folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = args.rows if args.rows is not None else (REFERENCE_ROWS if args.full else SAMPLE_ROWS)
    tail = args.tail if args.tail is not None else (0 if args.full else SAMPLE_TAIL)
    shards = args.shards or (4 if args.full else 1)
    out = Path(args.output) if args.output else HERE / ("reference_full" if args.full else "reference_like")
    write_reference_like(out, rows=rows, seed=args.seed, tail=tail, num_shards=shards)
    log.info("wrote %s: %d rows (%d from the tail past 20,000 tokens)", out, rows + tail, tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
