"""Where a report's lengths and plan come from: lengths in memory, a packed folder, or tokenized input.

:func:`report_from_lengths` plans the rows as ``packer pack`` would; :func:`report_from_packed` reads the plan
back from a packed folder's shards (:func:`recover_lengths` rebuilds the input rows' lengths from them and the
manifest's statistics); :func:`report_from_input` reads the lengths of tokenized input. Each hands its arrays to
:func:`packer.report.comparison.build_report`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from packer import format as fmt
from packer.errors import PackerError
from packer.input import Columns, scan_inputs
from packer.packed_reader import PackedReader
from packer.plan import (
    DEFAULT_OVERFLOW,
    DEFAULT_STRATEGY,
    DEFAULT_FILLER,
    make_segments,
    plan_packs,
)
from packer.report.comparison import Report, build_report
from packer.report.training import ModelShape, TrainingSetup
from packer.stats import compute_stats

log = logging.getLogger(__name__)


def report_from_lengths(
    lengths: np.ndarray,
    *,
    capacity: int = fmt.DEFAULT_CAPACITY,
    strategy: str = DEFAULT_STRATEGY,
    overflow: str = DEFAULT_OVERFLOW,
    seed: int = 0,
    filler: float = DEFAULT_FILLER,
    setup: TrainingSetup = TrainingSetup(),
    model: ModelShape | None = None,
    source: dict | None = None,
) -> Report:
    """The report for rows of the given lengths, planned as ``packer pack`` would plan them.

    Args:
        lengths: int (rows,), tokens per row (zeros are empty rows).
        capacity, strategy, overflow, seed, filler: the packing options (see :func:`packer.plan.plan_packs`).
        setup: the training run.
        model: the model's shape, for the FLOPs cost model; None for the token cost model.
        source: what to record as the report's source (defaults to ``{"kind": "lengths"}``).

    Returns:
        A :class:`Report`.
    """
    lengths = np.asarray(lengths)
    segments = make_segments(lengths, capacity=capacity, overflow=overflow)
    plan = plan_packs(segments.length, capacity=capacity, strategy=strategy, seed=seed, filler=filler)
    stats = compute_stats(lengths.astype(np.int64), segments, plan)
    src = {"kind": "lengths"} if source is None else dict(source)
    src.update(capacity=plan.capacity, strategy=strategy, overflow=overflow, seed=seed, filler=filler,
               rows=segments.n_rows, tokens=segments.tokens_in, lengths_exact=True)
    return build_report(
        lengths=lengths,
        trained=segments.length.astype(np.int64),
        stats=stats,
        seg_lengths=segments.length[plan.members],
        pack_offsets=plan.pack_offsets,
        capacity=plan.capacity,
        setup=setup,
        model=model,
        source=src,
    )


def is_packed_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a packer manifest (of any file type: reading it checks that)."""
    return Path(path).is_dir() and os.path.lexists(Path(path) / fmt.MANIFEST_FILE)


def _spread(total: int, count: int, longest: int) -> np.ndarray:
    """``count`` lengths summing to ``total``: one ``longest``, the rest as even as integers allow."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count == 1:
        return np.array([total], dtype=np.int64)
    rest = total - longest
    out = np.full(count, rest // (count - 1), dtype=np.int64)
    out[1 : 1 + rest % (count - 1)] += 1
    out[0] = longest
    return out


def recover_lengths(manifest: dict, seg_lengths: np.ndarray, seq_index: np.ndarray) -> tuple[np.ndarray, bool]:
    """The input rows' lengths, from the packed sequences and the manifest's statistics.

    Rows that are in the packs whole (or split into pieces) get their exact length. The shards do not hold the
    rows that ``--overflow drop`` left out or the tokens ``truncate`` cut off; for those the manifest gives the
    count, the total and the longest row, and the lengths are spread evenly around that longest one. Returns
    the lengths (int64, rows) and whether they are all exact.
    """
    stats = manifest[fmt.MANIFEST_STATS]
    capacity = int(manifest[fmt.MANIFEST_CONFIG]["capacity"])
    n_rows = int(stats["sequences_in"])
    try:
        lengths = np.zeros(n_rows, dtype=np.int64)
    except (MemoryError, ValueError):
        raise PackerError(f"the manifest counts {n_rows:,} input rows, too many to hold their lengths; the folder is "
                          "damaged, re-run 'packer pack'") from None
    if seq_index.size and (seq_index.min() < 0 or seq_index.max() >= n_rows):
        raise PackerError(f"{fmt.SEQ_INDEX} holds a row outside [0, {n_rows:,}); the folder is damaged")
    np.add.at(lengths, seq_index, seg_lengths)
    longest = int(stats["max_length_in"])
    exact = True
    dropped, truncated = int(stats["sequences_dropped"]), int(stats["sequences_truncated"])
    if dropped:
        missing = np.flatnonzero(lengths == 0)
        if missing.shape[0] < dropped:
            raise PackerError(f"the manifest counts {dropped:,} dropped rows but only {missing.shape[0]:,} rows are "
                              "missing from the packs; the folder is damaged")
        lengths[missing[:dropped]] = _spread(int(stats["tokens_dropped"]), dropped, longest)
        # exact only when one row was dropped and no empty row competes for its position
        exact = dropped == 1 and missing.shape[0] == 1
    if truncated:
        at_cap = np.flatnonzero(lengths == capacity)
        exact = exact and truncated == 1 and at_cap.shape[0] == 1
        at_cap = at_cap[:truncated]
        if at_cap.shape[0] < truncated:
            raise PackerError(f"the manifest counts {truncated:,} truncated rows but fewer rows have {capacity:,} "
                              "tokens; the folder is damaged")
        lengths[at_cap] += _spread(int(stats["tokens_truncated"]), truncated, longest - capacity)
        exact = exact and truncated <= 1
    if int(lengths.sum()) != int(stats["tokens_in"]):
        raise PackerError(f"the packs and the manifest disagree on the input's tokens ({int(lengths.sum()):,} vs "
                          f"{int(stats['tokens_in']):,}); the folder is damaged, re-run 'packer pack'")
    return lengths, exact


def report_from_packed(
    folder: str | os.PathLike, *, setup: TrainingSetup = TrainingSetup(), model: ModelShape | None = None,
    allow_unsealed: bool = False,
) -> Report:
    """The report for an already packed folder: the plan and the lengths are read back from its shards.

    Only the ``cu_seqlens`` and ``seq_index`` columns are touched (memory-mapped); no token is read.
    ``allow_unsealed``: read a manifest without its checksum (an older packer's); refused by default.
    """
    folder = Path(folder)
    reader = PackedReader(folder, allow_unsealed=allow_unsealed)  # checks the manifest's schema and the shards
    manifest = reader.manifest
    cfg = manifest[fmt.MANIFEST_CONFIG]
    stats = manifest[fmt.MANIFEST_STATS]
    # segment lengths (int64, in pack order), pack offsets (int64, packs + 1) and seq_index (int64): the reader
    # opens only the manifest's shard names inside the folder, regular files only, and checks the offsets and
    # cu_seqlens it returns
    seg, offsets, index = reader.sequences()
    if offsets.shape[0] - 1 != int(stats["packs"]):
        raise PackerError(f"{folder}: the shards hold {offsets.shape[0] - 1:,} packs, the manifest says "
                          f"{int(stats['packs']):,}; the folder is damaged, re-run 'packer pack'")
    lengths, exact = recover_lengths(manifest, seg, index)
    if not exact:
        log.debug("%s: the lengths of %d over-capacity rows are not in the packs; spread from the manifest's totals",
                  folder, int(stats["sequences_dropped"]) + int(stats["sequences_truncated"]))
    source = {
        "kind": "packed",
        "path": str(folder),
        "capacity": int(cfg["capacity"]),
        "strategy": cfg["strategy"],
        "overflow": cfg["overflow"],
        "seed": cfg.get("seed", 0),
        "filler": cfg.get("filler", DEFAULT_FILLER),
        "rows": int(stats["sequences_in"]),
        "tokens": int(stats["tokens_in"]),
        "lengths_exact": exact,
    }
    # the sequences in input order (row, then piece): the order make_segments gives them, so a packed folder and
    # its tokenized input simulate the same padding-mode shuffles
    trained = seg[np.lexsort((-seg, index))]
    return build_report(lengths=lengths, trained=trained, stats=stats, seg_lengths=seg, pack_offsets=offsets,
                        capacity=int(cfg["capacity"]), setup=setup, model=model, source=source)


def report_from_input(
    inputs,
    *,
    columns=None,
    capacity: int = fmt.DEFAULT_CAPACITY,
    strategy: str = DEFAULT_STRATEGY,
    overflow: str = DEFAULT_OVERFLOW,
    seed: int = 0,
    filler: float = DEFAULT_FILLER,
    setup: TrainingSetup = TrainingSetup(),
    model: ModelShape | None = None,
) -> Report:
    """The report for tokenized input (files, folders, globs; see :mod:`packer.input`).

    Lengths come from the Arrow list offsets; no token is read.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inp = scan_inputs(list(inputs), columns=columns or Columns())
    source = {"kind": "tokenized", "path": ", ".join(str(p) for p in inputs), "files": len(inp.files)}
    return report_from_lengths(inp.lengths, capacity=capacity, strategy=strategy, overflow=overflow, seed=seed,
                               filler=filler, setup=setup, model=model, source=source)
