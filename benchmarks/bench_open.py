"""Opening a packed folder with PackedDataset: time and memory, then reading items (the shards are memory-mapped).

    python benchmarks/bench_open.py                      # bench_loader.py's folder (30,000 rows, 316 MB)
    python benchmarks/bench_open.py --rows 300000        # builds a ~3.2 GB folder once in benchmarks/_data/
    python benchmarks/bench_open.py --data packed        # or any packed folder

The measurements run in a fresh process, so memory starts from the imports alone, after the page cache has been
warmed by reading the folder once (the figures are for a folder on local disk that was read recently; a cold
folder pays the disk's latency on each first touch instead). Memory is split into anonymous pages (the process's
own allocations, which must stay small) and file-backed pages (the mapped shards: the kernel can drop them at any
time and reads them back on the next touch). File-backed pages grow by more than the bytes read: measured here,
a plain numpy copy of one 160 kB pack mapped about 4 MB, because the kernel maps whole page-cache folios per fault.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import REPO

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time
import numpy as np

def rss():
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["RssAnon"], fields["RssFile"]

import packer.torch
from packer.torch import PackedDataset

out = {"imports": rss()}
t = time.perf_counter()
ds = PackedDataset(sys.argv[1])
out["open_s"] = time.perf_counter() - t
out["open"] = rss()
reader = ds.reader
firsts = [int(reader.row_starts[s]) for s in range(reader.n_shards)]
t = time.perf_counter()
for i in firsts:
    ds[i]
out["first_items_s"] = time.perf_counter() - t
out["first_items"] = rss()
order = np.random.default_rng(0).permutation(len(ds))[:1000]
t = time.perf_counter()
for i in order:
    ds[int(i)]
out["items_s"] = time.perf_counter() - t
out["items"] = rss()
out["packs"], out["shards"] = len(ds), reader.n_shards
out["bytes"] = sum(p.stat().st_size for p in reader.shard_paths)
print(json.dumps(out))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="a packed folder (default: build one in benchmarks/_data/)")
    p.add_argument("--rows", type=int, default=30_000, help="reference-like rows to pack when building data")
    args = p.parse_args(argv)
    from bench_loader import build_data

    data = args.data or build_data(args.rows)
    for shard in sorted(Path(data).glob("*.arrow")):  # warm the page cache
        with open(shard, "rb") as fh:
            while fh.read(16 << 20):
                pass
    res = subprocess.run([sys.executable, "-c", CHILD, str(data)], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    mb = 1 << 20
    base_anon, base_file = r["imports"]
    print(f"folder: {data} ({r['packs']:,} packs in {r['shards']} shards, {r['bytes'] / 1e9:.2f} GB)")
    print(f"{'step':42s} {'seconds':>9s} {'anon +MiB':>10s} {'file +MiB':>10s}")
    print(f"{'after import packer.torch (baseline)':42s} {'':>9s} {base_anon / mb:10.1f} {base_file / mb:10.1f}")
    for label, key, secs in (("PackedDataset(path)", "open", r["open_s"]),
                             (f"first item of each of {r['shards']} shards", "first_items", r["first_items_s"]),
                             ("1,000 random items", "items", r["items_s"])):
        anon, file = r[key]
        print(f"{label:42s} {secs:9.4f} {(anon - base_anon) / mb:10.1f} {(file - base_file) / mb:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
