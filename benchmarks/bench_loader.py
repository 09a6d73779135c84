"""Loader throughput: PackedDataset (+ collate, + DataLoader workers) against a plain numpy memmap read.

    python benchmarks/bench_loader.py                      # builds benchmarks/_data/ once (30,000 reference-like rows)
    python benchmarks/bench_loader.py --data packed        # or any packed folder

The baseline reads the same stored bytes of every pack (its input_ids, labels and cu_seqlens, int32) straight from
``np.memmap`` of the shard files, copying them into fresh arrays; the loader does that and also widens to int64,
pads to the capacity, numbers the positions and builds torch tensors. All methods read the packs in the same
random order from a warm page cache, interleaved over several passes; each line reports its best pass (other
processes on the machine only ever slow a pass down). "per worker" is one process doing a worker's whole job
(dataset item + collate); the DataLoader lines add the worker processes and the transfer to the main process.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packer import format as fmt  # noqa: E402
from packer.packed_reader import PackedReader  # noqa: E402

HERE = Path(__file__).resolve().parent


def build_data(rows: int) -> Path:
    """Pack ``rows`` reference-like rows once into benchmarks/_data/ (an Arrow file: no ``datasets`` needed)."""
    from packer.convert import PackConfig, pack_dataset
    from packer.input import Columns
    from data_samples.synthetic import reference_like_lengths, reference_like_table

    root = HERE / "_data"
    src, out = root / f"loader_input_{rows}.arrow", root / f"loader_packed_{rows}"
    if (out / fmt.MANIFEST_FILE).exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        table = reference_like_table(reference_like_lengths(rows, seed=1), seed=1)
        with pa.OSFile(str(src), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    pack_dataset(src, out, config=PackConfig(columns=Columns(labels="labels")), overwrite=True, progress=False)
    return out


class MemmapBaseline:
    """Each pack's stored int32 lists located in the shard files, read with plain ``np.memmap`` slicing."""

    def __init__(self, reader: PackedReader):
        self.maps, self.spans = [], []  # spans: (map, [(start, stop) for ids, labels, cu]) per pack
        for path in reader.shard_paths:
            src = pa.memory_map(str(path))
            table = pa.ipc.open_stream(src).read_all()
            src.seek(0)
            base = src.read_buffer(1).address
            mm = np.memmap(path, dtype=np.int32, mode="r")
            self.maps.append(mm)
            cols = []
            for name in (fmt.INPUT_IDS, fmt.LABELS, fmt.CU_SEQLENS):
                for chunk in table.column(name).chunks:
                    values = chunk.values
                    start = (values.buffers()[1].address - base) // 4 + values.offset
                    cols.append(start + chunk.offsets.to_numpy().astype(np.int64))
                    break  # packer writes one record batch per shard
            ids, labels, cu = cols
            for r in range(table.num_rows):
                self.spans.append((mm, ids[r], ids[r + 1], labels[r], labels[r + 1], cu[r], cu[r + 1]))

    def read(self, i: int):
        mm, a0, a1, b0, b1, c0, c1 = self.spans[i]
        return np.array(mm[a0:a1]), np.array(mm[b0:b1]), np.array(mm[c0:c1])


def timed(fn, order) -> float:
    t = time.perf_counter()
    for i in order:
        fn(i)
    return time.perf_counter() - t


class _EmptyPacks:
    """Items of the same shapes that cost nothing to make: what a DataLoader's worker transfer alone costs."""

    def __init__(self, n: int, capacity: int):
        self.n, self.capacity = n, capacity

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import torch

        rows = torch.empty((3, self.capacity), dtype=torch.int64)
        return {"input_ids": rows[0], "labels": rows[1], "position_ids": rows[2],
                "cu_seqlens": torch.zeros(2, dtype=torch.int32), "max_seqlen": self.capacity, "num_label_tokens": 0,
                "num_tokens": 0, "index": int(i)}


# What a training step consumes, for scale: a dense decoder takes about 6 * parameters FLOPs per trained token
# (forward and backward; attention excluded, which only lowers the rate), and one H100 sustains about 40% of its
# 989 dense bf16 TFLOP/s in a well-tuned run.
H100_BF16_FLOPS = 989e12
MFU = 0.40
MODEL_PARAMS = {"125M": 125e6, "1B": 1e9, "7B": 7e9}


def consumed_packs_per_s(params: float, capacity: int) -> float:
    """Packs of ``capacity`` tokens per second one H100 trains on at :data:`MFU`."""
    return H100_BF16_FLOPS * MFU / (6 * params) / capacity


def loader_pass(ds, order, workers: int, batch_size: int, collate=None) -> tuple[float, int]:
    """Seconds for all batches after the first (worker start-up excluded) and the packs they held."""
    from torch.utils.data import DataLoader

    from packer.torch import collate_packed

    batches = [order[k : k + batch_size].tolist() for k in range(0, len(order), batch_size)]
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate or collate_packed,
                        prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    packs = 0
    for batch in it:
        packs += batch["input_ids"].shape[0]
    return time.perf_counter() - t, packs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="a packed folder (default: build one in benchmarks/_data/)")
    p.add_argument("--rows", type=int, default=30_000, help="reference-like rows to pack when building data")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts to time")
    p.add_argument("--batch-size", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from packer.torch import PackedDataset, collate_packed

    data = args.data or build_data(args.rows)
    t = time.perf_counter()
    ds = PackedDataset(data)
    first_open_s = time.perf_counter() - t  # includes pyarrow's one-time IPC set-up
    t = time.perf_counter()
    ds = PackedDataset(data)
    open_s = time.perf_counter() - t
    reader = ds.reader
    n = len(ds)
    stored = int(reader.num_tokens().sum() * 8 + (reader.num_sequences().sum() + n) * 4)
    folder_bytes = sum(pth.stat().st_size for pth in reader.shard_paths)
    for pth in reader.shard_paths:  # warm the page cache: every method reads from memory
        with open(pth, "rb") as fh:
            while fh.read(16 << 20):
                pass
    base = MemmapBaseline(reader)
    order = np.random.default_rng(0).permutation(n)
    ds32 = PackedDataset(data, dtype=torch.int32)
    # compile or load the numba kernel before timing
    ds[0], ds32[0], collate_packed([ds[0]]), collate_packed(ds.__getitems__([0, 1]))

    def reader_copy(i):
        return [np.array(x) for x in reader.pack(i)]

    methods = {
        "numpy memmap read (baseline)": base.read,
        "PackedReader.pack + copy": reader_copy,
        "PackedDataset[i]": ds.__getitem__,
        "PackedDataset[i] + collate (per worker)": lambda i: collate_packed([ds[i]]),
        "PackedDataset(dtype=int32)[i] + collate": lambda i: collate_packed([ds32[i]]),
        "4 packs per batch: [ds[i] for i] + collate": lambda i: collate_packed([ds[j] for j in quads[i]]),
        "4 packs per batch: __getitems__ + collate": lambda i: collate_packed(ds.__getitems__(quads[i])),
    }
    # the batched methods run over the same packs, four at a time (their "order" is the batch index; see timed)
    quads = {k // 4: order[k : k + 4].tolist() for k in range(0, n - n % 4, 4)}
    batched = {name for name in methods if name.startswith("4 packs")}
    best = {k: float("inf") for k in methods}
    best_loader = {w: (float("inf"), 1) for w in args.workers}
    floors = {"items torch.empty (transfer floor)": (_EmptyPacks(n, ds.capacity), None)}
    best_floor = {(w, f): (float("inf"), 1) for w in args.workers for f in floors}
    torch.set_num_threads(1)
    for _ in range(args.passes):
        for name, fn in methods.items():
            best[name] = min(best[name], timed(fn, range(len(quads)) if name in batched else order))
        for w in args.workers:
            sec, packs = loader_pass(ds, order, w, args.batch_size)
            if sec / packs < best_loader[w][0] / best_loader[w][1]:
                best_loader[w] = (sec, packs)
            for f, (floor, collate) in floors.items():
                sec, packs = loader_pass(floor, order, w, args.batch_size, collate)
                if sec / packs < best_floor[w, f][0] / best_floor[w, f][1]:
                    best_floor[w, f] = (sec, packs)

    mean_tokens = reader.num_tokens().mean()
    print(f"data: {data} ({n:,} packs of {ds.capacity:,} tokens, {mean_tokens:,.0f} real tokens per pack, "
          f"{folder_bytes / 1e6:,.0f} MB in {reader.n_shards} shards)")
    print(f"open: {open_s * 1e3:.1f} ms ({first_open_s * 1e3:.0f} ms the first time in a process)")
    print(f"cpu: {os.cpu_count()} cores visible; torch {torch.__version__}; best of {args.passes} passes, "
          "random pack order, warm page cache")
    print(f"stored bytes read per pack: {stored / n / 1e3:,.1f} kB (input_ids + labels + cu_seqlens, int32)\n")
    base_rate = n / best["numpy memmap read (baseline)"]
    print(f"{'method':48s} {'packs/s':>10s} {'MB/s':>9s} {'us/pack':>9s} {'vs memmap':>10s}")
    rows = [(k, (4 * len(quads) if k in batched else n) / v) for k, v in best.items()]
    for w in args.workers:
        rows.append((f"DataLoader(num_workers={w}, batch_size={args.batch_size})",
                     best_loader[w][1] / best_loader[w][0]))
        for f in floors:
            rows.append((f"  {f}", best_floor[w, f][1] / best_floor[w, f][0]))
    for name, rate in rows:
        print(f"{name:48s} {rate:10,.0f} {rate * stored / n / 1e6:9,.0f} {1e6 / rate:9.1f} {rate / base_rate:9.0%}")
    per_worker = n / best["PackedDataset[i] + collate (per worker)"]
    written = 3 * ds.capacity * 8
    print(f"\nbytes written per pack: memmap read {stored / n / 1e3:,.0f} kB, PackedDataset item {written / 1e3:,.0f} kB "
          f"(three int64 rows); GB/s written: memmap {base_rate * stored / n / 1e9:.1f}, "
          f"dataset + collate {per_worker * written / 1e9:.1f}")
    print(f"loader (dataset + collate, one worker) vs numpy memmap read: {per_worker / base_rate:.0%}")
    print(f"packs/s per worker, the worker's own work: {per_worker:,.0f}")
    for w, (sec, packs) in best_loader.items():
        print(f"packs/s per worker through DataLoader({w} worker{'s' * (w > 1)}): {packs / sec / w:,.0f} "
              f"({packs / sec:,.0f} packs/s in all)")
    one_worker = best_loader[min(best_loader)][1] / best_loader[min(best_loader)][0] if best_loader else per_worker
    print(f"\nwhat one H100 trains on at {MFU:.0%} of its dense bf16 peak (6 x parameters FLOPs per token), in packs of "
          f"{ds.capacity:,} tokens, against the {min(best_loader, default=0)}-worker DataLoader above:")
    for name, params in MODEL_PARAMS.items():
        need = consumed_packs_per_s(params, ds.capacity)
        print(f"  {name:>5s} model: {need:8,.1f} packs/s  ({one_worker / need:,.0f}x headroom)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
