"""Check a packed folder: manifest, shard checksums, format invariants and, given the input, that every input
sequence is in exactly one pack with identical tokens and labels (or empty, dropped or truncated as the
overflow policy says), with token counts that add up exactly.

exit status: 0 verified, 1 defects found (listed), 2 error (e.g. the input cannot be read).

examples:
  packer verify packed/
  packer verify packed/ --input data_samples/reference_like
  packer verify packed/ --input 'shards/*.parquet' --max-defects 100
"""
from __future__ import annotations

import argparse

from packer.verify import DEFAULT_MAX_DEFECTS, verify_packed

NAME = "verify"
HELP = "check a packed folder's checksums and invariants, and against its input"
EXIT_DEFECTS = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="a packed folder written by 'packer pack'")
    p.add_argument("--input", nargs="+", metavar="INPUT", default=None,
                   help="the tokenized input it was packed from (as given to 'packer pack'); its columns are the "
                   "ones the manifest names")
    p.add_argument("--max-defects", type=int, default=DEFAULT_MAX_DEFECTS,
                   help="defects listed per check; all are counted (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    report = verify_packed(args.folder, inputs=args.input, max_defects=args.max_defects)
    print(report.format())
    return 0 if report.ok else EXIT_DEFECTS
