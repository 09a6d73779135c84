"""Kernel benchmark: 1,000,000 reference-like lengths into 20,000-token packs, every strategy.

    python benchmarks/bench_kernel.py [--n 1000000]

Prints, per strategy: the median time of 5 warm calls of packer.plan.plan_packs (validation, placement order,
kernel, grouping; lengths only), packs against the lower bound, efficiency and mixing. The first call's cost is
reported apart: compiling from scratch (a fresh process with an empty numba cache) and loading the on-disk cache.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import REPO, median_time

import numpy as np

from packer.plan import STRATEGIES, make_segments, plan_packs
from data_samples.synthetic import reference_like_lengths

FIRST_CALL = """
import time, numpy as np
from packer.plan import plan_packs
t = time.perf_counter(); plan_packs(np.array([3, 5, 7], dtype=np.int32), capacity=10); print(time.perf_counter() - t)
"""


def first_call(cache_dir: str | None) -> float:
    env = dict(os.environ)
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, env=env, cwd=REPO,
                         check=True)
    return float(out.stdout.strip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--capacity", type=int, default=20_000)
    args = p.parse_args()
    raw = reference_like_lengths(args.n, seed=0)
    seg = make_segments(raw, capacity=args.capacity, overflow="drop")
    lengths = seg.length
    print(f"{args.n:,} reference-like lengths (mean {raw.mean():,.0f}, max {raw.max():,}), capacity "
          f"{args.capacity:,}; {seg.dropped_rows} longer than the capacity dropped before packing")
    with tempfile.TemporaryDirectory() as d:
        cold = first_call(d)
        cached = first_call(d)
    print(f"first call: {cold:.2f} s compiling from scratch, {cached:.2f} s loading the numba cache")
    median = np.median(lengths)
    print(f"{'strategy':<9} {'median ms':>10} {'packs':>9} {'bound':>9} {'+':>4} {'efficiency':>11} "
          f"{'all-short packs':>16} {'seqs/pack max':>14}")
    for strategy in STRATEGIES:
        plan_packs(lengths, capacity=args.capacity, strategy=strategy)
        seconds = median_time(lambda: plan_packs(lengths, capacity=args.capacity, strategy=strategy), repeat=5)
        plan = plan_packs(lengths, capacity=args.capacity, strategy=strategy)
        longs = np.add.reduceat((lengths >= median)[plan.members].astype(np.int64), plan.pack_offsets[:-1])
        print(f"{strategy:<9} {seconds * 1e3:>10.1f} {plan.n_packs:>9,} {plan.lower_bound:>9,} "
              f"{plan.n_packs - plan.lower_bound:>4} {plan.efficiency:>11.4%} {np.mean(longs == 0):>16.2%} "
              f"{np.diff(plan.pack_offsets).max():>14}")
    copy = median_time(lambda: np.sort(lengths), repeat=5)
    print(f"for scale: np.sort of the same lengths takes {copy * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
