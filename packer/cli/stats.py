"""Print the statistics of a packed folder (from its manifest).

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


def run(args: argparse.Namespace) -> int:
    manifest = fmt.read_manifest(args.folder)
    stats = manifest[fmt.MANIFEST_STATS]
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    cfg = manifest[fmt.MANIFEST_CONFIG]
    print(f"{args.folder}: {fmt.FORMAT_NAME} v{manifest[fmt.MANIFEST_VERSION]}, strategy {cfg['strategy']}, "
          f"overflow {cfg['overflow']}, {len(manifest[fmt.MANIFEST_SHARDS])} shard(s)")
    print(format_stats(stats, manifest.get(fmt.MANIFEST_RUN, {}).get("seconds")))
    return 0
