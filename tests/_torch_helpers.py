"""Shared fixtures of the torch-layer tests: small packed folders whose sequence ``i`` is ``[i + 1] * n_i``.

Token ``i + 1`` (never 0, the default pad id) names the sequence, so any mix-up of tokens, labels, positions or
boundaries shows in the values. Labels: the first ``n_i // 3`` tokens of sequence ``i`` are a prompt (``-100``),
the rest equal the token, as in supervised fine-tuning data.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer.convert import PackConfig, pack_dataset
from packer.input import Columns

REPO = Path(__file__).resolve().parents[1]
IGNORE = -100


def sequence_table(lengths) -> pa.Table:
    """Rows ``[i + 1] * lengths[i]`` with prompt-masked labels (see the module docstring)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.repeat(np.arange(1, lengths.shape[0] + 1, dtype=np.int32), lengths)
    labels = ids.copy()
    pos = np.arange(ids.shape[0]) - np.repeat(offsets[:-1], lengths)
    labels[pos < np.repeat(lengths // 3, lengths)] = IGNORE
    off = pa.array(offsets.astype(np.int32))
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(off, pa.array(ids)),
            "labels": pa.ListArray.from_arrays(off, pa.array(labels)),
        }
    )


def write_input(path: Path, lengths) -> Path:
    """Write :func:`sequence_table` as an Arrow IPC stream file."""
    table = sequence_table(lengths)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path


def make_packed(tmp: Path, lengths, *, capacity: int, shard_size: int = 1000, strategy: str | None = None) -> Path:
    """Pack sequences of ``lengths`` into ``tmp/packed`` and return the folder."""
    tmp.mkdir(parents=True, exist_ok=True)
    src = write_input(tmp / "input.arrow", lengths)
    kw = {"strategy": strategy} if strategy else {}
    config = PackConfig(capacity=capacity, shard_size=shard_size, columns=Columns(labels="labels"), **kw)
    out = tmp / "packed"
    pack_dataset(src, out, config=config, progress=False, overwrite=True)
    return out


def random_lengths(n: int, *, capacity: int, seed: int = 0) -> np.ndarray:
    """``n`` lengths in [2, capacity], mostly short with a few long ones."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(np.log(capacity / 8), 0.9, n).astype(np.int64), capacity)
    return np.maximum(lengths, 2)


def expected_sequences(lengths) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sequence id (its token) -> (input_ids, labels) as in the input, the slow reference."""
    table = sequence_table(lengths)
    ids = table.column("input_ids").to_pylist()
    labels = table.column("labels").to_pylist()
    return {i + 1: (np.asarray(a), np.asarray(b)) for i, (a, b) in enumerate(zip(ids, labels))}


def run_env() -> dict:
    """Environment for subprocesses: this checkout importable, one thread each (2 shared cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_python(args: list[str], *, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, env=run_env(), capture_output=True, text=True, timeout=timeout
    )
