"""Shared fixtures: small tokenized inputs you can read at a glance (row i is [i] * n_i)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples" / "reference_like"


def readable_table(lengths, *, first_row: int = 0, labels: bool = False, id_type=pa.int32()) -> pa.Table:
    """Row i holds ``[first_row + i] * n_i``; with ``labels``, its first third is -100 and the rest the token."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.repeat(np.arange(first_row, first_row + len(lengths), dtype=np.int64), lengths)
    cols = {"input_ids": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, type=id_type))}
    if labels:
        lab = ids.copy()
        pos = np.arange(ids.shape[0]) - np.repeat(offsets[:-1], lengths)
        lab[pos < np.repeat(lengths // 3, lengths)] = -100
        cols["labels"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(lab, type=pa.int32()))
    return pa.table(cols)


def write_arrow_file(path: Path, table: pa.Table, *, batch_rows: int | None = None) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=batch_rows)
    return path


def write_arrow_stream(path: Path, table: pa.Table, *, batch_rows: int | None = None) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=batch_rows)
    return path


def write_parquet(path: Path, table: pa.Table, *, row_group: int | None = None) -> Path:
    pq.write_table(table, str(path), row_group_size=row_group)
    return path


@pytest.fixture
def lengths():
    """Mixed lengths for capacity 100: short, medium, exact fits, one empty, two over-long."""
    rng = np.random.default_rng(3)
    out = rng.integers(1, 60, size=200)
    out[[5, 17]] = [100, 99]
    out[40] = 0
    out[[70, 150]] = [250, 101]
    return out


@pytest.fixture
def samples_dir():
    assert SAMPLES.is_dir(), "data_samples/reference_like is missing; run python data_samples/make_samples.py"
    return SAMPLES
