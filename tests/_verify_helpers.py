"""Shared fixtures for the verify, crash-safety and hostile-input tests: readable inputs and shard surgery."""
from __future__ import annotations

import xxhash
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packer import format as fmt
from tests._manifest_helpers import load_manifest, rewrite_manifest


def token(i: int, j: int) -> int:
    """Token ``j`` of input row ``i``: rows are told apart by their tokens, positions within a row too."""
    return (i * 1009 + j) % 30_011 + 1


def rows_table(lengths, *, labels: bool = False, loss_mask: bool = False) -> pa.Table:
    """One row per length; ``input_ids`` row ``i`` is ``[token(i, 0), token(i, 1), ...]``.

    ``labels``: add a labels column (-100 on the first third of each row, the token elsewhere);
    ``loss_mask``: add a 0/1 ``loss_mask`` column (0 on the first third).
    """
    ids = [[token(i, j) for j in range(n)] for i, n in enumerate(lengths)]
    cols = {"input_ids": pa.array(ids, type=pa.list_(pa.int32()))}
    if labels:
        cols["labels"] = pa.array([[fmt.IGNORE_INDEX if j < len(r) // 3 else t for j, t in enumerate(r)] for r in ids],
                                  type=pa.list_(pa.int32()))
    if loss_mask:
        cols["loss_mask"] = pa.array([[0 if j < len(r) // 3 else 1 for j in range(len(r))] for r in ids],
                                     type=pa.list_(pa.int8()))
    return pa.table(cols)


def write_stream(table: pa.Table, path: Path, *, max_chunksize: int | None = None) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=max_chunksize)
    return path


def write_file(table: pa.Table, path: Path) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return path


def write_parquet(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, str(path))
    return path


def read_shard_rows(folder: Path, index: int) -> list[dict]:
    manifest = json.loads((folder / fmt.MANIFEST_FILE).read_text())
    name = manifest[fmt.MANIFEST_SHARDS][index]["file"]
    with pa.memory_map(str(folder / name)) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def rewrite_shard(folder: Path, index: int, rows: list[dict], *, fix_checksum: bool = True) -> None:
    """Replace shard ``index`` with ``rows`` (format columns); update its manifest entry (size, checksum, counts)
    and re-seal the manifest so that only the deeper checks can notice what changed."""
    path = folder / load_manifest(folder)[fmt.MANIFEST_SHARDS][index]["file"]
    for r in rows:  # seq_lengths repeats cu_seqlens: keep it in step, so only the edited column disagrees
        cu = r[fmt.CU_SEQLENS]
        r[fmt.SEQ_LENGTHS] = [b - a for a, b in zip(cu[:-1], cu[1:])]
    table = pa.Table.from_pylist(rows, schema=fmt.SCHEMA)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, fmt.SCHEMA) as w:
        w.write_table(table)
    if fix_checksum:
        data = path.read_bytes()
        rewrite_manifest(folder, lambda m: m[fmt.MANIFEST_SHARDS][index].update(
            bytes=len(data), xxh3_128=xxhash.xxh3_128(data).hexdigest(), rows=len(rows),
            tokens=sum(len(r[fmt.INPUT_IDS]) for r in rows), sequences=sum(len(r[fmt.SEQ_INDEX]) for r in rows)))


def flip_bit(path: Path, byte: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def reference_rows(path: Path, kind: str, names: list[str]) -> list[list] | None:
    """Read ``names`` of a data file with pyarrow alone (fully validated, as Python lists), or None if pyarrow
    cannot: the independent reading the fuzz test compares packer's output with."""
    try:
        if kind == "parquet":
            table = pq.read_table(str(path), columns=names)
        else:
            buf = pa.py_buffer(path.read_bytes())
            reader = pa.ipc.open_file(buf) if kind == "file" else pa.ipc.open_stream(buf)
            table = reader.read_all().select(names)
        table.validate(full=True)
        return [table.column(n).to_pylist() for n in names]
    except Exception:  # noqa: BLE001 - any failure means "pyarrow cannot read it"
        return None


def unpack_rows(folder: Path) -> dict[int, list[tuple[int, list[int], list[int]]]]:
    """Input row -> its packed pieces ``(offset, tokens, labels)``, read back with pyarrow and Python lists."""
    manifest = json.loads((folder / fmt.MANIFEST_FILE).read_text())
    out: dict[int, list] = {}
    for i in range(len(manifest[fmt.MANIFEST_SHARDS])):
        for r in read_shard_rows(folder, i):
            cu = r[fmt.CU_SEQLENS]
            for k, (row, off) in enumerate(zip(r[fmt.SEQ_INDEX], r[fmt.SEQ_OFFSET])):
                a, b = cu[k], cu[k + 1]
                out.setdefault(row, []).append((off, r[fmt.INPUT_IDS][a:b], r[fmt.LABELS][a:b]))
    return out


def lengths_mixed(rng: np.random.Generator, n: int, capacity: int) -> list[int]:
    """Lengths with empty rows, rows longer than ``capacity`` and the rest in between."""
    lengths = rng.integers(1, capacity, n).tolist()
    for k in rng.choice(n, size=max(1, n // 10), replace=False):
        lengths[int(k)] = int(rng.integers(capacity + 1, 3 * capacity))
    for k in rng.choice(n, size=max(1, n // 20), replace=False):
        lengths[int(k)] = 0
    return lengths
