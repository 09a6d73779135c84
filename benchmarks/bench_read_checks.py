"""What the read-side checks cost: opening a folder and reading items, this checkout against another (main).

    python benchmarks/bench_read_checks.py --old /work/main            # packs 20,000 reference-like rows once
    python benchmarks/bench_read_checks.py --old /work/main --data packed

Each side runs in its own interpreter (``PYTHONPATH`` set to its checkout, a numba cache of its own, warmed before
timing) on the same folder, one after the other, in one run of this script: ``open`` is ``PackedReader(folder)``
(manifest, shards mapped, offsets checked), ``pack`` one ``reader.pack(i)`` (the per-item ``cu_seqlens`` check is
here), ``item`` one ``PackedDataset[i]`` (padded to the capacity, the fill kernel). ``all cu at open`` is the
vectorised check of every ``cu_seqlens`` entry (``attention_costs``) that a check at open instead of per item would
add. The fastest of several repeats (a shared machine's other work only ever adds time), in microseconds (open and
all cu in milliseconds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import DATA, REPO

CHILD = r"""
import json, sys, time
import numpy as np
from packer.packed_reader import PackedReader
from packer.torch import PackedDataset

folder = sys.argv[1]
def best(fn, repeat):  # the fastest repeat: on a shared machine, other processes only ever add time
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return float(np.min(ts))

ds = PackedDataset(folder)
r = ds.reader
n = len(r)
order = [int(i) for i in np.random.default_rng(0).permutation(n)[:1000]]
for i in order: ds[i]  # warm: the page cache, numba's dispatch
out = {"packs": n, "shards": r.n_shards}
out["open_ms"] = best(lambda: PackedReader(folder), 40) * 1e3
out["pack_us"] = best(lambda: [r.pack(i) for i in order], 7) / len(order) * 1e6
out["item_us"] = best(lambda: [ds[i] for i in order], 7) / len(order) * 1e6
out["all_cu_ms"] = best(lambda: r.attention_costs(), 15) * 1e3
print(json.dumps(out))
"""


def measure(checkout: Path, folder: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), NUMBA_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=600)
    if proc.returncode:
        raise SystemExit(f"{checkout}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="the checkout to compare with, e.g. /work/main")
    ap.add_argument("--data", type=Path, help="a packed folder (default: 20,000 reference-like rows packed at "
                    "capacity 20,000 into 100-pack shards: about 1,340 packs, 14 shards)")
    args = ap.parse_args()
    folder = args.data
    if folder is None:
        folder = DATA / "read_checks_packed"
        if not (folder / "packer.json").exists():
            from packer.convert import PackConfig, pack_dataset
            from data_samples.synthetic import reference_like_lengths, reference_like_table
            import pyarrow as pa

            DATA.mkdir(parents=True, exist_ok=True)
            src = DATA / "read_checks_input.arrow"
            table = reference_like_table(reference_like_lengths(20_000, seed=0))
            with pa.OSFile(str(src), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
            pack_dataset([src], folder, config=PackConfig(shard_size=100), progress=False, overwrite=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"old": [], "new": []}
        for name, checkout in (("old", args.old), ("new", REPO)):
            measure(checkout, folder, Path(tmp) / name)  # compiles into the cache: timed from the second run
        for name, checkout in (("old", args.old), ("new", REPO)):
            rows[name].append(measure(checkout, folder, Path(tmp) / name))
        rows = {k: {m: min(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
    o, n = rows["old"], rows["new"]
    print(f"{folder}: {n['packs']:,} packs in {n['shards']} shard(s)")
    print(f"{'':24}{'old':>10}{'new':>10}{'change':>10}")
    for key, label in (("open_ms", "open (ms)"), ("pack_us", "pack() (us)"), ("item_us", "item (us)"),
                       ("all_cu_ms", "all cu at open (ms)")):
        print(f"{label:24}{o[key]:>10.3f}{n[key]:>10.3f}{(n[key] - o[key]) / o[key]:>+10.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
