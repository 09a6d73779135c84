"""Check a packed folder: manifest, shard checksums, format invariants and, given the input, that every input
sequence is in exactly one pack with identical tokens and labels (or empty, dropped or truncated as the
overflow policy says), with token counts that add up exactly.

The manifest carries its own checksum; a manifest edited on purpose (or written by an older packer, without
one) is re-sealed with --reseal once every other check passes.

A manifest without its checksum, a shard that is a symlink, FIFO or device, or a capacity the statistics and the
shards contradict are defects. verify never follows a shard name out of the folder.

exit status: 0 verified (or resealed), 1 defects found (listed), 2 error (e.g. the input cannot be read).

examples:
  packer verify packed/
  packer verify packed/ --input data_samples/reference_like
  packer verify packed/ --input 'shards/*.parquet' --max-defects 100
  packer verify packed/ --input data_samples/reference_like --reseal   # after editing packer.json on purpose
"""
from __future__ import annotations

import argparse

from packer import format as fmt
from packer.verify import DEFAULT_MAX_DEFECTS, reseal_manifest, verify_packed

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
    p.add_argument("--allow-unsealed", action="store_true",
                   help=f"accept a {fmt.MANIFEST_FILE} without its own checksum (a folder of an older packer) instead "
                   "of reporting it as a defect; --reseal adds the checksum for good")
    p.add_argument("--reseal", action="store_true",
                   help=f"if every check but manifest_checksum passes, record the manifest's current checksum in "
                   f"{fmt.MANIFEST_FILE} (after an edit on purpose, or to add one to an older packer's folder)")


def run(args: argparse.Namespace) -> int:
    if not args.reseal:
        report = verify_packed(args.folder, inputs=args.input, max_defects=args.max_defects,
                               allow_unsealed=args.allow_unsealed)
        if not (args.quiet and report.ok):  # -q: the report only when something is wrong; the exit status says ok
            print(report.format())
        return 0 if report.ok else EXIT_DEFECTS
    report, resealed = reseal_manifest(args.folder, inputs=args.input, max_defects=args.max_defects)
    print(report.format())
    if resealed:
        print(f"resealed {fmt.MANIFEST_FILE}: its checksum now covers its current content")
        return 0
    if report.ok:
        print(f"{fmt.MANIFEST_FILE} already sealed with its current content; nothing to do")
        return 0
    print("not resealed: checks other than manifest_checksum failed; fix the folder or re-run 'packer pack'")
    return EXIT_DEFECTS
