"""Reference-like tokenized data: lengths shaped like the user's reference run, written as a datasets folder.

The reference (``shared/seed/padding_vs_packing.md``) has 99,388 samples, mean 1,334 tokens and a longest
sequence near 66,930. A log-normal with sigma 1.0 and mean 1,334 matches all three: its 99,388-sample maximum is
about 66,000 and 0.07% of its samples exceed 20,000 tokens. Up to a million lengths are drawn by stratified
inverse-CDF sampling (one draw per quantile slice, shuffled), so even a few hundred rows have the reference's
mean; beyond that, plain log-normal draws.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from packer import format as fmt

REFERENCE_ROWS = 99_388
REFERENCE_MEAN = 1_334
REFERENCE_SIGMA = 1.0
VOCAB_SIZE = 32_000
STRATIFIED_MAX = 1_000_000


def reference_like_lengths(n: int, *, seed: int = 0, tail: int = 0, tail_above: int = 20_000) -> np.ndarray:
    """``n`` log-normal lengths (int64, >= 1) with mean about 1,334, plus ``tail`` lengths above ``tail_above``.

    The ``tail`` rows are drawn from the same distribution conditioned on exceeding ``tail_above``, so a small
    sample still exercises the overflow policies; they are shuffled in with the rest.
    """
    rng = np.random.default_rng(seed)
    mu = math.log(REFERENCE_MEAN) - REFERENCE_SIGMA**2 / 2
    if n > STRATIFIED_MAX:
        body = rng.lognormal(mu, REFERENCE_SIGMA, n)
    else:
        u = (np.arange(n) + rng.random(n)) / max(n, 1)
        inv = NormalDist(mu, REFERENCE_SIGMA).inv_cdf
        body = np.exp([inv(min(max(float(x), 1e-15), 1 - 1e-15)) for x in u])
    parts = [np.asarray(body, dtype=np.float64)]
    if tail:
        dist = NormalDist(mu, REFERENCE_SIGMA)
        p_above = 1.0 - dist.cdf(math.log(tail_above))
        parts.append(np.exp([dist.inv_cdf(1.0 - p_above * float(r)) for r in rng.random(tail)]))
    lengths = np.maximum(np.concatenate(parts), 1).astype(np.int64)
    return lengths[rng.permutation(lengths.shape[0])]


def reference_like_table(lengths: np.ndarray, *, seed: int = 0, prompt_fraction: float = 0.3) -> pa.Table:
    """A tokenized table with one row per length: ``input_ids`` and ``labels`` (both list<int32>).

    Token ids are uniform in ``[1, VOCAB_SIZE)``; the first ``prompt_fraction`` of each row (a prompt) has label
    ``-100``, the rest its token id, as in supervised fine-tuning data.
    """
    rng = np.random.default_rng(seed + 1)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("more than 2**31 tokens in one table; write several files")
    ids = rng.integers(1, VOCAB_SIZE, int(offsets[-1]), dtype=np.int32)
    labels = ids.copy()
    prompt = (lengths * prompt_fraction).astype(np.int64)
    starts = offsets[:-1]
    mask = np.zeros(ids.shape[0] + 1, dtype=np.int32)
    np.add.at(mask, starts, 1)
    np.add.at(mask, starts + prompt, -1)
    labels[np.cumsum(mask[:-1]) > 0] = fmt.IGNORE_INDEX
    off = pa.array(offsets.astype(np.int32))
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(off, pa.array(ids)),
            "labels": pa.ListArray.from_arrays(off, pa.array(labels)),
        }
    )


def write_reference_like(
    output: str | os.PathLike, *, rows: int, seed: int = 0, tail: int = 0, num_shards: int = 1
) -> Path:
    """Write a ``datasets.save_to_disk`` folder of reference-like rows and return its path."""
    import datasets

    lengths = reference_like_lengths(rows, seed=seed, tail=tail)
    table = reference_like_table(lengths, seed=seed)
    datasets.Dataset(table).save_to_disk(str(output), num_shards=num_shards)
    return Path(output)
