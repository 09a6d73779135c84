"""Check a packed folder against its input: the invariants every packed folder must satisfy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from packer import format as fmt
from tests import reference as ref


def read_packed(folder) -> tuple[dict, pa.Table]:
    manifest = fmt.read_manifest(folder)
    tables = []
    for shard in manifest[fmt.MANIFEST_SHARDS]:
        with pa.memory_map(str(Path(folder) / shard["file"])) as src:
            tables.append(pa.ipc.open_stream(src).read_all())
    return manifest, pa.concat_tables(tables)


def check_packed(folder, rows_ids: list[np.ndarray], rows_labels: list[np.ndarray] | None, *, capacity: int,
                 overflow: str) -> dict:
    """Assert every invariant of ``folder`` given the input rows; return the manifest."""
    manifest, table = read_packed(folder)
    assert table.schema.equals(fmt.SCHEMA)
    seen = []
    for r in range(table.num_rows):
        ids = np.asarray(table.column(fmt.INPUT_IDS)[r].values)
        labels = np.asarray(table.column(fmt.LABELS)[r].values)
        cu = np.asarray(table.column(fmt.CU_SEQLENS)[r].values)
        index = np.asarray(table.column(fmt.SEQ_INDEX)[r].values)
        offset = np.asarray(table.column(fmt.SEQ_OFFSET)[r].values)
        assert 0 < ids.shape[0] <= capacity, f"pack {r} has {ids.shape[0]} tokens"
        assert labels.shape == ids.shape
        assert cu[0] == 0 and cu[-1] == ids.shape[0] and (np.diff(cu) > 0).all(), f"pack {r}: bad cu_seqlens {cu}"
        assert cu.shape[0] == index.shape[0] + 1 == offset.shape[0] + 1
        assert (labels[cu[:-1]] == fmt.IGNORE_INDEX).all(), f"pack {r}: unmasked sequence start"
        for k in range(index.shape[0]):
            row, start, n = int(index[k]), int(offset[k]), int(cu[k + 1] - cu[k])
            want = rows_ids[row][start : start + n]
            assert n == want.shape[0], f"pack {r} sequence {k}: {n} tokens but input row {row} has {want.shape[0]}"
            assert np.array_equal(ids[cu[k] : cu[k + 1]], want), f"pack {r} sequence {k}: tokens differ"
            want_labels = (rows_labels[row] if rows_labels is not None else rows_ids[row])[start : start + n].astype(np.int64)
            want_labels[0] = fmt.IGNORE_INDEX
            assert np.array_equal(labels[cu[k] : cu[k + 1]], want_labels), f"pack {r} sequence {k}: labels differ"
            seen.append((row, start, n))
    lengths = [len(x) for x in rows_ids]
    expected = ref.segments(lengths, capacity=capacity, overflow=overflow)
    assert sorted(seen) == sorted(expected), "sequences missing, duplicated or cut differently"
    s = manifest[fmt.MANIFEST_STATS]
    tokens_in = sum(lengths)
    assert s["tokens_in"] == tokens_in
    assert s["tokens_out"] == sum(n for _, _, n in seen)
    assert s["tokens_out"] + s["tokens_dropped"] + s["tokens_truncated"] == tokens_in
    assert s["sequences_in"] == len(lengths)
    assert s["packs"] == table.num_rows
    over = [n for n in lengths if n > capacity]
    if overflow == "drop":
        assert s["sequences_dropped"] == len(over) and s["tokens_dropped"] == sum(over)
    elif overflow == "truncate":
        assert s["sequences_truncated"] == len(over) and s["tokens_truncated"] == sum(n - capacity for n in over)
    else:
        assert s["sequences_split"] == len(over) and s["tokens_dropped"] == s["tokens_truncated"] == 0
    assert s["empty_sequences_skipped"] == sum(1 for n in lengths if n == 0)
    return manifest
