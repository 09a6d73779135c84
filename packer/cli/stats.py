"""Print the statistics of a packed folder (from its manifest, whose checksum and schema are checked; the shards
are not read: 'packer verify' checks them).

examples:
  packer stats packed/
  packer stats packed/ --json
"""
from __future__ import annotations

import argparse
import json

from packer import format as fmt
from packer.stats import format_stats

NAME = "stats"
HELP = "print a packed folder's statistics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="a packed folder written by 'packer pack'")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--allow-unsealed", action="store_true",
                   help=f"read a {fmt.MANIFEST_FILE} without its own checksum (a folder of an older packer); "
                   "'packer verify DIR --reseal' adds one")


def run(args: argparse.Namespace) -> int:
    # read_manifest checks the schema: every field used below is there with its type (or a PackerError says which)
    manifest = fmt.read_manifest(args.folder, allow_unsealed=args.allow_unsealed)
    stats = manifest[fmt.MANIFEST_STATS]
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    cfg = manifest[fmt.MANIFEST_CONFIG]
    print(f"{args.folder}: {fmt.FORMAT_NAME} v{manifest[fmt.MANIFEST_VERSION]}, strategy {cfg['strategy']}, "
          f"overflow {cfg['overflow']}, {len(manifest[fmt.MANIFEST_SHARDS])} shard(s)")
    timings = manifest.get(fmt.MANIFEST_RUN, {}).get("seconds")
    if not (isinstance(timings, dict) and all(fmt.is_finite_number(v) for v in timings.values())):
        timings = None  # run timings are informative only, and not covered by the checksum
    print(format_stats(stats, timings))
    return 0
