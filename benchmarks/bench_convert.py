"""End-to-end benchmark: the full 99,388-row reference-like set (about 133M tokens) converted by `packer pack`,
against the copy floor (a plain pyarrow read and write of the same input bytes), side by side in one run.

    python benchmarks/bench_convert.py [--repeat 3] [--trl-python PYTHON]

Each contender runs in its own process (startup and imports included) and the medians are compared. Peak memory
is that process's resident high-water mark: `rss` includes pages of the memory-mapped input that the kernel may
drop at will, `anon` is the heap (what must stay bounded). If TRL is importable (by this Python or by the one
given with --trl-python), its `pack_dataset` (strategy "bfd") runs on the same data and is printed too.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import fmt_bytes, full_reference_set, run_measured

COPY = """
import sys, json, glob, os, time
import pyarrow as pa
src, dst = sys.argv[1], sys.argv[2]
t = time.perf_counter()
os.makedirs(dst, exist_ok=True)
files = json.load(open(os.path.join(src, "state.json")))["_data_files"]
for f in files:
    name = f["filename"]
    with pa.memory_map(os.path.join(src, name)) as source:
        table = pa.ipc.open_stream(source).read_all()
    with pa.OSFile(os.path.join(dst, name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
print(time.perf_counter() - t)
"""

TRL = """
import sys, time, json
import numpy as np
import datasets
from trl import pack_dataset
t = time.perf_counter()
ds = datasets.load_from_disk(sys.argv[1])
packed = pack_dataset(ds, seq_length=20000, strategy="bfd", map_kwargs={"cache_file_name": sys.argv[2] + "/trl.arrow"})
n = packed.num_rows
tokens = sum(int(np.sum(x)) for x in packed.with_format("numpy")["seq_lengths"])
print(json.dumps({"seconds": time.perf_counter() - t, "packs": n, "tokens": tokens}))
"""


def median_run(argv, repeat, cleanup):
    runs = []
    for _ in range(repeat):
        cleanup()
        runs.append(run_measured(argv))
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return best, statistics.median(r["seconds"] for r in runs), max(r["peak_anon"] for r in runs), max(
        r["peak_rss"] for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--trl-python", default=sys.executable, help="a Python that can import trl")
    p.add_argument("--strategy", default="bfd")
    args = p.parse_args()
    src = full_reference_set()
    in_bytes = sum(f.stat().st_size for f in src.glob("*.arrow"))
    work = Path(tempfile.mkdtemp(prefix="packer-bench-"))
    try:
        copy_dst, out = work / "copy", work / "packed"
        copy_run, copy_s, copy_anon, copy_rss = median_run(
            [sys.executable, "-c", COPY, str(src), str(copy_dst)], args.repeat,
            lambda: shutil.rmtree(copy_dst, ignore_errors=True))
        run, pack_s, pack_anon, pack_rss = median_run(
            [sys.executable, "-m", "packer", "-q", "pack", str(src), "--output", str(out),
             "--strategy", args.strategy], args.repeat, lambda: shutil.rmtree(out, ignore_errors=True))
        manifest = json.loads((out / "packer.json").read_text())
        stats, phases = manifest["stats"], manifest["run"]["seconds"]
        print(f"input: {src} ({stats['sequences_in']:,} sequences, {stats['tokens_in']:,} tokens, "
              f"{fmt_bytes(in_bytes)})")
        print(f"{'':<28} {'seconds':>8} {'vs copy':>8} {'peak anon':>10} {'peak rss':>10}")
        print(f"{'copy floor (pyarrow r+w)':<28} {copy_s:>8.2f} {1.0:>8.2f} {fmt_bytes(copy_anon):>10} "
              f"{fmt_bytes(copy_rss):>10}")
        print(f"{'packer pack (' + args.strategy + ')':<28} {pack_s:>8.2f} {pack_s / copy_s:>8.2f} "
              f"{fmt_bytes(pack_anon):>10} {fmt_bytes(pack_rss):>10}")
        copy_inner = float(copy_run["stdout"].strip())
        print(f"  in-process, imports and start-up excluded: copy {copy_inner:.2f}s, packer {phases['total']:.2f}s "
              f"({phases['total'] / copy_inner:.2f}x); packer phases: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items() if k != "total"))
        print(f"  packs {stats['packs']:,} (lower bound {stats['lower_bound_packs']:,}, "
              f"+{stats['packs_over_lower_bound']}), efficiency {stats['packing_efficiency']:.4%}, "
              f"sequences/pack {stats['sequences_per_pack_mean']:.2f}, data loss {stats['data_loss_sequences']:.3%} "
              f"of sequences / {stats['data_loss_tokens']:.3%} of tokens")
        probe = subprocess.run([args.trl_python, "-c", "import trl"], capture_output=True)
        if probe.returncode == 0:
            trl_dir = work / "trl"
            trl_dir.mkdir()
            r = run_measured([args.trl_python, "-c", TRL, str(src), str(trl_dir)])
            res = json.loads(r["stdout"].strip().splitlines()[-1])
            eff = res["tokens"] / (res["packs"] * 20_000)
            print(f"{'TRL pack_dataset (bfd)':<28} {r['seconds']:>8.2f} {r['seconds'] / copy_s:>8.2f} "
                  f"{fmt_bytes(r['peak_anon']):>10} {fmt_bytes(r['peak_rss']):>10}")
            print(f"  TRL: {res['packs']:,} packs, efficiency {eff:.4%} (packs each 1,000-row map batch "
                  "separately; truncates long sequences; writes input_ids and seq_lengths only)")
        else:
            print("TRL not importable: pass --trl-python /path/to/python-with-trl to compare")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
