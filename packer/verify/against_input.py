"""The checks against the input (``packer verify --input``): every input row's pieces in exactly one pack, with
identical tokens and labels, or counted as dropped or truncated."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from packer import format as fmt
from packer.input import TokenizedInput, input_fingerprint
from packer.verify.records import (
    BLOCK_TOKENS,
    Collector,
    ExpectedPieces,
    LoadedShard,
    ShardSequences,
    VerifyConfig,
)


def _expected_segments(lengths: np.ndarray, capacity: int, overflow: str) -> ExpectedPieces:
    """The pieces the overflow policy makes of each input row (int64 (rows,) ``lengths``), computed here
    independently of packer.plan; ``recomputed`` is left empty."""
    nonempty = lengths > 0
    long = lengths > capacity
    if overflow == "split":
        count = np.where(nonempty, (lengths + capacity - 1) // capacity, 0)
    elif overflow == "drop":
        count = (nonempty & ~long).astype(np.int64)
    else:
        count = nonempty.astype(np.int64)
    first = np.cumsum(count) - count
    row = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), count)
    start = (np.arange(row.shape[0], dtype=np.int64) - first[row]) * capacity
    length = np.minimum(lengths[row] - start, capacity)
    return ExpectedPieces(first=first, count=count, row=row, start=start, length=length, lengths=lengths)


def match_sequences(seqs: ShardSequences, exp: ExpectedPieces, n_rows: int, cfg: VerifyConfig, sh: LoadedShard,
           col: Collector) -> np.ndarray:
    """Index (int64 (n,)) of each packed sequence's expected piece, or -1 (and a coverage defect) where it has
    none."""
    capacity = cfg.capacity
    row, off, length = seqs.row, seqs.offset, seqs.length
    ok = (row >= 0) & (row < n_rows) & (off >= 0) & (off % capacity == 0)
    r = np.where(ok, row, 0)
    piece = off // capacity
    ok &= piece < exp.count[r]
    m = np.where(ok, exp.first[r] + piece, 0)
    m[~ok] = -1
    bad_len = ok & seqs.good & (length != exp.length[np.maximum(m, 0)])

    def describe(k):
        where = {"shard": sh.name, "pack": seqs.pack[k], "row": row[k]}
        head = f"sequence {int(seqs.k[k])} of the pack (offset {int(off[k])}, {int(length[k])} tokens): "
        if not ok[k]:
            if not 0 <= row[k] < n_rows:
                return head + f"the input has no row {int(row[k])}", where
            n = int(exp.lengths[row[k]])
            return head + (f"the input row has {n:,} tokens, and --overflow {cfg.overflow} with capacity "
                           f"{capacity:,} makes no piece at offset {int(off[k])} of it"), where
        return head + f"the input's piece there has {int(exp.length[m[k]]):,} tokens", where

    col.many("coverage", np.flatnonzero(~ok | bad_len), describe)
    m[bad_len] = -1
    return m


def compare_tokens(sh: LoadedShard, seqs: ShardSequences, m: np.ndarray, inp: TokenizedInput, col: Collector) -> int:
    """Compare the tokens and labels of every matched sequence (``m``: :func:`match_sequences`) of a sound pack with the
    input. Returns tokens compared."""
    sel = np.flatnonzero(seqs.good & (m >= 0))
    if not sel.shape[0]:
        return 0
    mode = "labels" if inp.columns.labels else "mask" if inp.columns.loss_mask else "ids"
    row, off, n, dst0 = seqs.row[sel], seqs.offset[sel], seqs.length[sel], seqs.start[sel]
    chunk_starts = inp.chunk_row_starts()
    chunk_of = np.searchsorted(chunk_starts, row, side="right") - 1
    compared = 0
    for c in np.unique(chunk_of):
        chunk = inp.chunks[int(c)]
        idx = np.flatnonzero(chunk_of == c) if len(inp.chunks) > 1 else np.arange(sel.shape[0])
        src0 = chunk.offsets[row[idx] - chunk.row_start] + off[idx]
        cum = np.cumsum(n[idx])
        cuts = np.searchsorted(cum, np.arange(BLOCK_TOKENS, int(cum[-1]), BLOCK_TOKENS), side="left") + 1
        for j0, j1 in zip(np.r_[0, cuts], np.r_[cuts, idx.shape[0]]):
            if j0 >= j1:
                continue
            lens = n[idx[j0:j1]]
            excl = np.cumsum(lens) - lens
            tot = int(lens.sum())
            pos = np.arange(tot, dtype=np.int64)
            src = pos + np.repeat(src0[j0:j1] - excl, lens)
            dst = pos + np.repeat(dst0[idx[j0:j1]] - excl, lens)
            want_ids = chunk.ids[src].astype(np.int64, copy=False)
            got_ids = sh.ids[dst]
            if mode == "labels":
                want_labels = chunk.labels[src].astype(np.int64, copy=False)
            elif mode == "mask":
                want_labels = np.where(chunk.mask[src] != 0, want_ids, fmt.IGNORE_INDEX)
            else:
                want_labels = want_ids.copy()
            want_labels[excl] = fmt.IGNORE_INDEX
            got_labels = sh.labels[dst]
            for what, got, want in (("input_ids", got_ids, want_ids), ("labels", got_labels, want_labels)):
                bad = np.flatnonzero(got != want)
                if not bad.shape[0]:
                    continue
                j = np.searchsorted(excl, bad, side="right") - 1  # block sequence of each mismatch
                seq_first = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
                per_seq = np.diff(np.r_[seq_first, bad.shape[0]])

                def describe(i, what=what, got=got, want=want, bad=bad, j=j, per_seq=per_seq):
                    t = int(bad[i])
                    jj = int(j[i])
                    k = int(sel[idx[j0 + jj]])
                    path, local = inp.locate(int(seqs.row[k]))
                    q = int(np.searchsorted(seq_first, i))
                    return (f"sequence {int(seqs.k[k])} of the pack ({os.path.basename(path)} row {local}, offset "
                            f"{int(seqs.offset[k])}): {what} differ at {int(per_seq[q]):,} of {int(lens[jj]):,} "
                            f"tokens, first at token {t - int(excl[jj])}: packed {int(got[t])}, input {int(want[t])}",
                            {"shard": sh.name, "pack": seqs.pack[k], "row": seqs.row[k]})

                col.many("tokens", bad[seq_first], lambda i: describe(int(np.searchsorted(bad, i))))
            compared += tot
    return compared


def check_input(manifest: dict, cfg: VerifyConfig, inp: TokenizedInput, col: Collector) -> ExpectedPieces:
    """Input rows and fingerprint against the manifest, and the statistics recomputed from the input. Returns the
    pieces the input should give, with the recomputed statistics."""

    col.ran.update(("input", "coverage"))
    lengths = inp.lengths
    info = manifest.get(fmt.MANIFEST_INPUT)
    info = info if isinstance(info, dict) else {}
    if info.get("rows") != inp.n_rows:
        col.add("input", f"the input has {inp.n_rows:,} rows, the manifest says {info.get('rows')!r}")
    files = info.get("files") if isinstance(info.get("files"), list) else []
    if len(files) == len(inp.files):
        for f, got in zip(files, inp.files):
            if isinstance(f, dict) and f.get("rows") != got.rows:
                col.add("input", f"{got.name} has {got.rows:,} rows, the manifest's {f.get('path')} had "
                        f"{f.get('rows')!r}")
    else:
        col.add("input", f"{len(inp.files)} input file(s), the manifest lists {len(files)}")
    fingerprint = input_fingerprint(inp)
    if info.get("fingerprint") != fingerprint:
        col.add("input", f"input fingerprint {fingerprint[:16]}..., the manifest has "
                f"{str(info.get('fingerprint'))[:16]}...: not the input this folder was packed from (or renamed, "
                "resized or reordered files)")
    col.detail["input"] = f"{inp.n_rows:,} rows in {len(inp.files)} file(s), fingerprint {fingerprint[:16]}... matches"

    capacity, overflow = cfg.capacity, cfg.overflow
    exp = _expected_segments(lengths, capacity, overflow)
    long = lengths > capacity
    recomputed = {
        "sequences_in": inp.n_rows,
        "tokens_in": int(lengths.sum()),
        "empty_sequences_skipped": int(np.count_nonzero(lengths == 0)),
        "sequences_dropped": int(np.count_nonzero(long)) if overflow == "drop" else 0,
        "tokens_dropped": int(lengths[long].sum()) if overflow == "drop" else 0,
        "sequences_truncated": int(np.count_nonzero(long)) if overflow == "truncate" else 0,
        "tokens_truncated": int((lengths[long] - capacity).sum()) if overflow == "truncate" else 0,
        "sequences_split": int(np.count_nonzero(long)) if overflow == "split" else 0,
        "sequences_out": int(exp.row.shape[0]),
        "tokens_out": int(exp.length.sum()),
    }
    stats = manifest[fmt.MANIFEST_STATS]
    for key, want in recomputed.items():
        if stats.get(key) != want:
            col.add("coverage", f"the input gives {key.replace('_', ' ')} = {want:,} with --overflow {overflow}, "
                    f"the manifest's stats say {stats.get(key)!r}")
    return replace(exp, recomputed=recomputed)


def check_coverage(exp: ExpectedPieces, matched: np.ndarray, inp: TokenizedInput, cfg: VerifyConfig,
                    col: Collector, *, complete: bool) -> None:
    """Every expected piece in exactly one pack (``matched``: int64, each packed sequence's piece or -1); a piece in
    none is reported only when every shard was read (``complete``)."""
    hits = np.bincount(matched[matched >= 0], minlength=exp.row.shape[0])
    missing = np.flatnonzero(hits == 0) if complete else np.zeros(0, dtype=np.int64)
    twice = np.flatnonzero(hits > 1)

    def describe(i, what):
        r = int(exp.row[i])
        path, local = inp.locate(r)
        return (f"{os.path.basename(path)} row {local} ({int(exp.lengths[r]):,} tokens), piece at offset "
                f"{int(exp.start[i]):,} ({int(exp.length[i]):,} tokens): {what}", {"row": r})

    col.many("coverage", missing, lambda i: describe(i, f"in no pack, but --overflow {cfg.overflow} keeps it"))
    col.many("coverage", twice, lambda i: describe(i, f"in {int(hits[i])} packs"))
    rec = exp.recomputed
    lost = rec["sequences_dropped"] + rec["sequences_truncated"]
    col.detail["coverage"] = (
        f"{rec['sequences_in']:,} input rows: {rec['sequences_out']:,} pieces each in exactly one pack, "
        f"{rec['empty_sequences_skipped']:,} empty, {rec['sequences_dropped']:,} dropped, "
        f"{rec['sequences_truncated']:,} truncated, {rec['sequences_split']:,} split; "
        f"{rec['tokens_in']:,} tokens in = {rec['tokens_out']:,} packed + {rec['tokens_dropped']:,} dropped + "
        f"{rec['tokens_truncated']:,} truncated" + (f" ({lost:,} rows lost to overflow)" if lost else ""))
