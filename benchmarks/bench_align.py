"""Alignment benchmark: --pad-to-multiple-of 8 and 16 against no alignment, on reference-like data, in one run.

    python benchmarks/bench_align.py [--rows 99388] [--convert-rows 10000] [--strategies bfd mixed]

Part 1 plans the full reference-like set's lengths (``data_samples.synthetic.reference_like_lengths``, 99,388 rows,
20,000-token packs, ``--overflow drop``) with each multiple and strategy, and prints the packs, the packs over the
lower bound ``ceil(real tokens / capacity)`` (and over the padded bound ``ceil(padded tokens / capacity)``), the
efficiency counting alignment padding as waste (``real tokens / (packs * capacity)``), the alignment padding's
share of the slots, and the median time of 5 warm ``plan_packs`` calls (the only phase alignment changes).

Part 2 packs a ``--convert-rows`` reference-like table end to end (``pack_dataset``: scan, plan, gather, write; one
worker) with each multiple and prints the median of 5 runs (after a warm-up run) of the wall time and of the plan and
gather-and-build phases (from the manifest's ``run``), to show what planning padded lengths and building
``cu_seqlens_padded`` cost; the total includes writing and fsyncing the shards, which varies most on a busy disk. It also times reading
every pack as a ``PackedDataset`` item, best of 7 passes (an aligned folder's items are laid out in their padded
spans).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import median_time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from packer.convert import PackConfig, pack_dataset
from packer.plan import make_segments, padded_lengths, plan_packs
from data_samples.synthetic import REFERENCE_ROWS, reference_like_lengths, reference_like_table

MULTIPLES = (None, 8, 16)


def plan_table(rows: int, capacity: int, strategies: list[str]) -> None:
    raw = reference_like_lengths(rows, seed=0)
    seg = make_segments(raw, capacity=capacity, overflow="drop")
    lengths = seg.length
    tokens = int(lengths.sum(dtype=np.int64))
    print(f"{rows:,} reference-like lengths, {tokens:,} tokens packed into {capacity:,}-token packs "
          f"({seg.dropped_rows} over the capacity dropped); lengths divisible by 4: "
          f"{np.mean(lengths % 4 == 0):.1%}, by 8: {np.mean(lengths % 8 == 0):.1%}, by 16: "
          f"{np.mean(lengths % 16 == 0):.1%}")
    print(f"{'strategy':<9}{'N':>5}{'packs':>8}{'lower bound':>13}{'over':>6}{'padded bound':>14}{'over':>6}"
          f"{'efficiency':>12}{'alignment pad':>15}{'plan ms':>10}")
    lower = -(-tokens // capacity)
    for strategy in strategies:
        for n in MULTIPLES:
            def run(n=n, strategy=strategy):
                return plan_packs(lengths, capacity=capacity, strategy=strategy, pad_to_multiple_of=n)

            plan = run()
            secs = median_time(run, repeat=5, warmup=1)
            padded = tokens if n is None else int(padded_lengths(lengths.astype(np.int64), n).sum())
            bound = -(-padded // capacity)
            slots = plan.n_packs * capacity
            print(f"{strategy:<9}{'-' if n is None else n:>5}{plan.n_packs:>8,}{lower:>13,}{plan.n_packs - lower:>+6}"
                  f"{bound:>14,}{plan.n_packs - bound:>+6}{plan.efficiency:>12.3%}{(padded - tokens) / slots:>15.3%}"
                  f"{secs * 1e3:>10.1f}")


def convert_table(rows: int, capacity: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "input.arrow"
        table = reference_like_table(reference_like_lengths(rows, seed=1), seed=1)
        with pa.OSFile(str(src), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        print(f"\nend to end: {rows:,} rows ({int(pa.compute.list_value_length(table.column('input_ids')).to_numpy().sum()):,} tokens), "
              "pack_dataset with one worker, median of 5 runs after a warm-up run")
        for n in MULTIPLES:
            config = PackConfig(capacity=capacity, pad_to_multiple_of=n)
            times, plans, gathers = [], [], []
            for k in range(6):
                t = time.perf_counter()
                m = pack_dataset(src, Path(d) / "out", config=config, progress=False, overwrite=True)
                if k:  # the first run warms the numba cache and the page cache
                    times.append(time.perf_counter() - t)
                    plans.append(m["run"]["seconds"]["plan"])
                    gathers.append(m["run"]["job_seconds"]["gather"])
            s = m["stats"]
            item_us = item_time(Path(d) / "out") * 1e6
            print(f"  N {'-' if n is None else n:>3}: total {statistics.median(times):.3f} s (plan "
                  f"{statistics.median(plans) * 1e3:.1f} ms, gather and build the shards "
                  f"{statistics.median(gathers) * 1e3:.0f} ms), {s['packs']:,} packs, efficiency "
                  f"{s['packing_efficiency']:.3%}, output {m['run']['output_bytes'] / 1e6:,.1f} MB; PackedDataset item "
                  f"{item_us:.0f} us")


def item_time(folder: Path) -> float:
    """Mean time of ``PackedDataset(folder)[i]`` over all packs, best of 7 passes (warm page cache; the best
    pass is the least disturbed by other jobs on a shared machine)."""
    from packer.torch import PackedDataset

    ds = PackedDataset(folder)
    for i in range(len(ds)):
        ds[i]
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        best = min(best, time.perf_counter() - t)
    return best / len(ds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=REFERENCE_ROWS)
    p.add_argument("--convert-rows", type=int, default=20_000)
    p.add_argument("--capacity", type=int, default=20_000)
    p.add_argument("--strategies", nargs="+", default=["bfd", "mixed"])
    args = p.parse_args()
    plan_table(args.rows, args.capacity, args.strategies)
    if args.convert_rows:
        convert_table(args.convert_rows, args.capacity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
