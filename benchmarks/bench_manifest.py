"""What checking the manifest's own checksum costs each time a packed folder is opened.

    python benchmarks/bench_manifest.py [--data data_samples/reference_full] [--repeat 200]

Packs the full reference-like set (made on first use, as ``make data-full`` does), then times
``packer.format.read_manifest`` on its manifest with the checksum check and without it, side by side, and the
same for a synthetic manifest of 1,000 shards (the real one with its shard list repeated, sealed like the writer
seals). Prints microseconds per open (medians of ``--repeat``) and the check's share of the open.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packer import format as fmt  # noqa: E402
from packer.convert import PackConfig, pack_dataset  # noqa: E402
from packer.input import Columns, has_column  # noqa: E402

from _common import median_time  # noqa: E402


def _many_shards(manifest: dict, n: int) -> dict:
    shards = manifest[fmt.MANIFEST_SHARDS]
    many = []
    for i in range(n):
        entry = dict(shards[i % len(shards)])
        entry[fmt.SHARD_FILE] = fmt.shard_name(i, n)
        many.append(entry)
    return fmt.seal_manifest({**manifest, fmt.MANIFEST_SHARDS: many})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="tokenized input (default data_samples/reference_full)")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--shards", type=int, default=1000, help="shards of the synthetic manifest")
    args = p.parse_args(argv)
    if args.data is None:
        from _common import full_reference_set

        args.data = str(full_reference_set())
    work = Path(tempfile.mkdtemp(prefix="bench_manifest_"))
    try:
        real = work / "real"
        config = PackConfig(columns=Columns(labels="labels" if has_column([args.data], "labels") else None))
        pack_dataset(args.data, real, config=config, progress=False)
        synthetic = work / "synthetic"
        synthetic.mkdir()
        (synthetic / fmt.MANIFEST_FILE).write_text(
            json.dumps(_many_shards(fmt.read_manifest(real), args.shards), indent=2) + "\n")
        print(f"read_manifest, medians of {args.repeat} (microseconds per open)")
        for name, folder in (("reference set", real), (f"{args.shards:,} shards", synthetic)):
            m = fmt.read_manifest(folder)
            size = (folder / fmt.MANIFEST_FILE).stat().st_size
            on = median_time(lambda: fmt.read_manifest(folder), repeat=args.repeat, warmup=5)
            off = median_time(lambda: fmt.read_manifest(folder, checksum=False), repeat=args.repeat, warmup=5)
            alone = median_time(lambda: fmt.manifest_checksum(m), repeat=args.repeat, warmup=5)
            print(f"  {name:<14} {len(m[fmt.MANIFEST_SHARDS]):>5} shards {size:>9,} bytes: checked {on * 1e6:8.1f}, "
                  f"unchecked {off * 1e6:8.1f}, checksum alone {alone * 1e6:8.1f}  ({on / off:.2f} x unchecked)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
