"""The checks of the shards themselves: schema, capacity, ``cu_seqlens``, labels, provenance, counts against the
manifest, and the alignment of ``--pad-to-multiple-of`` folders; whole shards at once as numpy views."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.verify.records import (
    Collector,
    DecodedShard,
    LoadedShard,
    Sequences,
    ShardSequences,
    Totals,
    VerifyConfig,
)


def _flat(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (int64 offsets starting at 0, flat values), read with the one shard-layout reader
    (:func:`packer.format.list_column_arrays`); zero-copy where it is one chunk."""
    column = table.column(name)
    arr = column.chunk(0) if column.num_chunks == 1 else pa.concat_arrays(column.chunks) if column.num_chunks \
        else pa.array([], type=column.type)
    dtype = np.int64 if arr.type.value_type == pa.int64() else np.int32
    offsets, values = fmt.list_column_arrays(arr, dtype)
    base = int(offsets[0])
    return offsets - base, values[base : int(offsets[-1])]


def decode_shard(data: pa.Buffer, name: str, col: Collector) -> DecodedShard | None:
    """Decode a shard's bytes as an Arrow stream with one of the format's schemas, once for every check; None (and a
    ``schema`` defect) when it is not one."""
    try:
        reader = pa.ipc.open_stream(data)
        if not any(reader.schema.equals(s) for s in (fmt.SCHEMA, fmt.LEGACY_SCHEMA, fmt.ALIGNED_SCHEMA)):
            col.add("schema", f"schema is {reader.schema}, not the format's {fmt.SCHEMA}".replace("\n", "; "),
                    shard=name)
            return None
        return DecodedShard(name, reader.read_all())
    except (pa.ArrowException, OSError, ValueError) as e:
        col.add("schema", _unreadable(e), shard=name)
        return None


def _unreadable(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"not a readable Arrow IPC stream ({msg})"


def load_shard(dec: DecodedShard, info: dict, pack_base: int, col: Collector) -> LoadedShard | None:
    """Validate a decoded shard's buffers and read its columns as flat arrays; None (and a defect) when they cannot
    be trusted: invalid buffers or nulls (``schema``), labels and input_ids of different lengths (``capacity``),
    seq_offset and seq_index of different lengths (``provenance``), seq_lengths that disagree with cu_seqlens."""
    name, table = dec.name, dec.table
    try:
        for batch in table.to_batches():
            batch.validate(full=True)  # corrupted offsets must not reach numpy indexing
    except (pa.ArrowException, OSError, ValueError) as e:
        col.add("schema", _unreadable(e), shard=name)
        return None
    for c in table.column_names:
        column = table.column(c)
        if column.null_count or any(ch.values.null_count for ch in column.chunks):
            col.add("schema", f"column {c!r} holds nulls", shard=name)
            return None
    if table.num_rows != info["rows"]:
        col.add("schema", f"{table.num_rows:,} packs, the manifest says {info['rows']:,}", shard=name)
    ids_off, ids = _flat(table, fmt.INPUT_IDS)
    lab_off, labels = _flat(table, fmt.LABELS)
    cu_off, cu = _flat(table, fmt.CU_SEQLENS)
    seq_off, seq_index = _flat(table, fmt.SEQ_INDEX)
    so_off, seq_offset = _flat(table, fmt.SEQ_OFFSET)
    if not np.array_equal(lab_off, ids_off):
        p = int(np.argmax(lab_off != ids_off)) - 1
        col.add("capacity", f"labels and input_ids differ in length in pack {pack_base + max(p, 0)}", shard=name,
                pack=pack_base + max(p, 0))
        return None
    if not np.array_equal(so_off, seq_off):
        p = int(np.argmax(so_off != seq_off)) - 1
        col.add("provenance", "seq_offset and seq_index differ in length", shard=name, pack=pack_base + max(p, 0))
        return None
    if fmt.SEQ_LENGTHS in table.column_names:  # folders written before the column lack it (format.LEGACY_SCHEMA)
        p = _seq_lengths_disagree(table, cu_off, cu)
        if p is not None:
            col.add("cu_seqlens", f"{fmt.SEQ_LENGTHS} disagrees with {fmt.CU_SEQLENS} in pack {pack_base + p}",
                    shard=name, pack=pack_base + p)
            return None
    return LoadedShard(name, pack_base, ids_off, ids, labels, cu_off, cu, seq_off, seq_index, seq_offset)


def _seq_lengths_disagree(table: pa.Table, cu_off: np.ndarray, cu: np.ndarray) -> int | None:
    """The first pack (within the shard) whose ``seq_lengths`` are not the steps of its ``cu_seqlens``, or None."""
    sl_off, seq_lengths = _flat(table, fmt.SEQ_LENGTHS)
    n_seq = np.diff(cu_off) - 1  # -1 for an empty cu_seqlens list, which check_shard reports too
    bad = np.diff(sl_off) != n_seq
    if not bad.any():  # one length per sequence in every pack: compare the values
        real = np.ones(cu.shape[0], dtype=bool)
        real[cu_off[:-1]] = False  # diff against the entry before: not across two packs
        cu64 = cu.astype(np.int64)
        wrong = np.flatnonzero(seq_lengths.astype(np.int64) != (cu64 - np.concatenate([[0], cu64[:-1]]))[real])
        if wrong.shape[0]:
            bad[np.searchsorted(sl_off, wrong[0], side="right") - 1] = True
    return int(np.argmax(bad)) if bad.any() else None


def check_shard(sh: LoadedShard, cfg: VerifyConfig, input_rows, col: Collector) -> ShardSequences:
    """Capacity, cu_seqlens, labels and provenance of one shard, all vectorised.

    Args:
        input_rows: the manifest's ``input.rows`` (sequences' ``seq_index`` must be below it when it is an int).

    Returns:
        The shard's sequences (in shard order) for the global checks.
    """
    rows = sh.ids_off.shape[0] - 1
    packs = np.arange(rows, dtype=np.int64) + sh.pack_base
    col.ran.update(("capacity", "cu_seqlens", "labels", "provenance"))
    over = _check_capacity(sh, packs, cfg.capacity, col)
    cu = sh.cu.astype(np.int64)
    bad_len, bad_cu = _check_cu_seqlens(sh, packs, cu, col)
    sound = ~bad_len & ~bad_cu & (sh.pack_sequences > 0) & ~over
    seqs = _sequence_table(sh, packs, cu, bad_len, sound)
    _check_sequence_starts(sh, seqs, col)
    _check_token_values(sh, cfg, packs, sound, seqs.start[seqs.good], col)
    _check_provenance(sh, seqs, cfg, input_rows, col)
    return seqs


def _check_capacity(sh: LoadedShard, packs: np.ndarray, capacity: int, col: Collector) -> np.ndarray:
    """Every pack holds 1..capacity tokens. Returns bool (packs,): the pack does not."""
    pack_tokens = sh.pack_tokens
    over = (pack_tokens == 0) | (pack_tokens > capacity)
    col.many("capacity", np.flatnonzero(over), lambda p: (
        f"{int(pack_tokens[p]):,} tokens; a pack holds 1 to {capacity:,}", {"shard": sh.name, "pack": packs[p]}))
    return over


def _check_cu_seqlens(sh: LoadedShard, packs: np.ndarray, cu: np.ndarray, col: Collector
                      ) -> tuple[np.ndarray, np.ndarray]:
    """cu_seqlens: one entry per sequence plus one, 0 first, strictly increasing, the pack's length last.

    Args:
        cu: the shard's ``cu_seqlens`` values as int64.

    Returns:
        ``(bad_len, bad_cu)``, bool (packs,): the pack's list has the wrong number of entries; it has the right
        number but wrong values.
    """
    rows = packs.shape[0]
    pack_tokens, n_seq, n_cu = sh.pack_tokens, sh.pack_sequences, sh.pack_cu_entries
    at = lambda p: {"shard": sh.name, "pack": packs[p]}  # noqa: E731
    bad_len = n_cu != n_seq + 1
    col.many("cu_seqlens", np.flatnonzero(bad_len),
             lambda p: (f"{int(n_cu[p])} entries for {int(n_seq[p])} sequences (needs {int(n_seq[p]) + 1})", at(p)))
    has = n_cu > 0
    first = np.zeros(rows, dtype=np.int64)
    last = np.zeros(rows, dtype=np.int64)
    first[has] = cu[sh.cu_off[:-1][has]]
    last[has] = cu[sh.cu_off[1:][has] - 1]
    step = np.diff(cu)  # step k: entry k + 1 minus entry k
    inside = np.ones(step.shape[0], dtype=bool)
    crossing = sh.cu_off[1:-1] - 1
    inside[crossing[(crossing >= 0) & (crossing < step.shape[0])]] = False
    bad_inc = np.zeros(rows, dtype=bool)
    not_inc = np.flatnonzero(inside & (step <= 0))
    if not_inc.shape[0]:
        bad_inc[np.searchsorted(sh.cu_off, not_inc, side="right") - 1] = True
    bad_cu = has & ~bad_len & ((first != 0) | (last != pack_tokens) | bad_inc)

    def describe_cu(p):
        entries = cu[sh.cu_off[p] : sh.cu_off[p + 1]]
        shown = ", ".join(str(v) for v in entries[:12]) + (", ..." if entries.shape[0] > 12 else "")
        if first[p] != 0:
            why = "does not start at 0"
        elif last[p] != pack_tokens[p]:
            why = f"ends at {int(last[p])}, but the pack has {int(pack_tokens[p])} tokens"
        else:
            why = "is not strictly increasing"
        return f"cu_seqlens [{shown}] {why}", at(p)

    col.many("cu_seqlens", np.flatnonzero(bad_cu), describe_cu)
    return bad_len, bad_cu


def _sequence_table(sh: LoadedShard, packs: np.ndarray, cu: np.ndarray, bad_len: np.ndarray, sound: np.ndarray
                    ) -> ShardSequences:
    """The shard's sequences; those of packs with a wrong number of cu_seqlens entries get length 0, not good."""
    rows = packs.shape[0]
    n_seq, n_cu = sh.pack_sequences, sh.pack_cu_entries
    step = np.diff(cu)
    seq_pack = np.repeat(np.arange(rows, dtype=np.int64), n_seq)
    row_of_entry = np.repeat(np.arange(rows, dtype=np.int64), n_cu)
    is_last = np.zeros(cu.shape[0], dtype=bool)
    is_last[sh.cu_off[1:][n_cu > 0] - 1] = True
    take = np.repeat(~bad_len, n_cu) & ~is_last if row_of_entry.shape[0] else is_last
    seq_len_ok = np.repeat(~bad_len, n_seq)
    starts = np.zeros(seq_pack.shape[0], dtype=np.int64)
    lengths = np.zeros(seq_pack.shape[0], dtype=np.int64)
    starts[seq_len_ok] = cu[take]
    lengths[seq_len_ok] = np.append(step, 0)[take]
    return ShardSequences(
        pack=packs[seq_pack],
        k=np.arange(seq_pack.shape[0], dtype=np.int64) - sh.seq_off[seq_pack],
        row=sh.seq_index.astype(np.int64),
        offset=sh.seq_offset.astype(np.int64),
        length=lengths,
        good=np.repeat(sound, n_seq),
        start=sh.ids_off[:-1][seq_pack] + starts,
    )


def _seq_where(sh: LoadedShard, seqs: ShardSequences, k: int) -> dict:
    return {"shard": sh.name, "pack": seqs.pack[k], "row": sh.seq_index[k]}


def _check_sequence_starts(sh: LoadedShard, seqs: ShardSequences, col: Collector) -> None:
    """labels: -100 at every sequence start of a sound pack."""
    gs = np.flatnonzero(seqs.good)
    unmasked = gs[sh.labels[seqs.start[gs]] != fmt.IGNORE_INDEX]

    def describe(k):
        in_pack = int(seqs.start[k] - sh.ids_off[seqs.pack[k] - sh.pack_base])
        return (f"sequence {int(seqs.k[k])} of the pack starts at token {in_pack} with label "
                f"{int(sh.labels[seqs.start[k]])}, not {fmt.IGNORE_INDEX}", _seq_where(sh, seqs, k))

    col.many("labels", unmasked, describe)


def _check_provenance(sh: LoadedShard, seqs: ShardSequences, cfg: VerifyConfig, input_rows, col: Collector) -> None:
    """seq_index within the input's rows (when the manifest records them), seq_offset as the overflow policy makes
    it."""
    capacity = cfg.capacity
    bad_row = sh.seq_index < 0
    if fmt.is_count(input_rows):
        bad_row |= sh.seq_index >= input_rows
    if cfg.overflow == "split":
        bad_off = (sh.seq_offset < 0) | (sh.seq_offset % capacity != 0)
    else:
        bad_off = sh.seq_offset != 0
    col.many("provenance", np.flatnonzero(bad_row | bad_off), lambda k: (
        f"sequence {int(seqs.k[k])} of the pack: seq_index {int(sh.seq_index[k])} is outside the input's "
        f"{input_rows} rows" if bad_row[k] else
        f"sequence {int(seqs.k[k])} of the pack: seq_offset {int(sh.seq_offset[k])} is impossible with "
        f"overflow {cfg.overflow} and capacity {capacity:,}", _seq_where(sh, seqs, k)))


def _check_token_values(sh: LoadedShard, cfg: VerifyConfig, packs: np.ndarray, sound: np.ndarray,
                        seq_starts: np.ndarray, col: Collector) -> None:
    """Token ids >= 0; labels -100 or >= 0; labels equal the tokens (or -100, with a loss mask) as configured."""
    columns = cfg.columns

    def at_token(t, what):
        p = int(np.searchsorted(sh.ids_off, t, side="right") - 1)
        return (f"token {int(t - sh.ids_off[p])} of the pack: {what}", {"shard": sh.name, "pack": packs[p]})

    col.many("labels", np.flatnonzero(sh.ids < 0),
             lambda t: at_token(t, f"token id {int(sh.ids[t])} is negative"))
    col.many("labels", np.flatnonzero((sh.labels < 0) & (sh.labels != fmt.IGNORE_INDEX)),
             lambda t: at_token(t, f"label {int(sh.labels[t])} is negative but not {fmt.IGNORE_INDEX}"))
    if columns.labels is not None:
        return  # labels came from a column: only the input can tell whether they are right
    tok_sound = np.repeat(sound, sh.pack_tokens)
    tok_sound[seq_starts] = False  # starts are checked above
    differs = sh.labels != sh.ids
    if columns.loss_mask is not None:
        differs &= sh.labels != fmt.IGNORE_INDEX
        rule = f"neither the token id nor {fmt.IGNORE_INDEX} (the config has a loss-mask column)"
    else:
        rule = "not the token id (the config has no labels column: labels are the tokens)"
    col.many("labels", np.flatnonzero(differs & tok_sound), lambda t: at_token(
        t, f"label {int(sh.labels[t])} for token id {int(sh.ids[t])}: {rule}"))


def check_unique(seq: Sequences, capacity: int, overflow: str, col: Collector) -> None:
    """No (row, offset) packed twice; with ``split``, each row's chunks contiguous and full but the last."""
    order = np.lexsort((seq.offset, seq.row))
    row, off = seq.row[order], seq.offset[order]
    same = (row[1:] == row[:-1]) & (off[1:] == off[:-1])

    def describe(i):
        a, b = order[i], order[i + 1]
        return (f"input row {int(row[i])} offset {int(off[i])} is packed twice: pack {int(seq.pack[a])} "
                f"(sequence {int(seq.k[a])}) and pack {int(seq.pack[b])} (sequence {int(seq.k[b])})",
                {"pack": seq.pack[b], "row": row[i]})

    col.many("provenance", np.flatnonzero(same), describe)
    if overflow != "split":
        return
    length = seq.length[order]
    good = seq.good[order]
    new_row = np.r_[True, row[1:] != row[:-1]]
    prev_end = np.r_[0, off[:-1] + length[:-1]]
    gap = ~new_row & (off != prev_end) & good & np.r_[False, good[:-1]] & np.r_[False, ~same]
    short = np.r_[~new_row[1:], False] & (length != capacity) & good
    lead = new_row & (off != 0)
    col.many("provenance", np.flatnonzero(gap | short | lead), lambda i: (
        f"split chunks not contiguous: chunk at offset {int(off[i])} ({int(length[i])} tokens) " + (
            "is the row's first piece" if lead[i] else "is not a full chunk but is followed by another" if short[i]
            else f"follows a chunk ending at {int(prev_end[i])}"),
        {"pack": seq.pack[order[i]], "row": row[i]}))


def check_counts(stats: dict, seq: Sequences, totals: Totals, col: Collector) -> None:
    """The shards' totals against the manifest's ``stats``, and the stats' own sums against them."""
    col.ran.add("counts")
    rows_out = int(np.unique(seq.row).shape[0])
    want = {
        "packs": totals.packs,
        "sequences_out": totals.sequences,
        "tokens_out": totals.tokens,
        "label_tokens": totals.label_tokens,
    }
    for key, have in want.items():
        if stats.get(key) != have or isinstance(stats.get(key), bool):
            col.add("counts", f"the shards hold {have:,} {key.replace('_', ' ')}, the manifest's stats say "
                    f"{stats.get(key)!r}")
    try:
        lost_tokens = stats["tokens_dropped"] + stats["tokens_truncated"]
        if stats["tokens_in"] - lost_tokens != totals.tokens:
            col.add("counts", f"tokens in {stats['tokens_in']:,} - dropped {stats['tokens_dropped']:,} - truncated "
                    f"{stats['tokens_truncated']:,} != {totals.tokens:,} tokens in the packs")
        kept_rows = stats["sequences_in"] - stats["empty_sequences_skipped"] - stats["sequences_dropped"]
        if kept_rows != rows_out:
            col.add("counts", f"sequences in {stats['sequences_in']:,} - empty {stats['empty_sequences_skipped']:,}"
                    f" - dropped {stats['sequences_dropped']:,} != {rows_out:,} input rows in the packs")
    except (KeyError, TypeError, ValueError) as e:
        col.add("counts", f"the manifest's stats lack a count or hold a non-number ({type(e).__name__}: {e})")
    col.detail["counts"] = (f"{totals.packs:,} packs, {totals.sequences:,} sequences, {totals.tokens:,} "
                            f"tokens, {totals.label_tokens:,} label tokens agree with the manifest")


def check_alignment(stats: dict, cfg: VerifyConfig, decoded: list[DecodedShard | None], col: Collector, *,
                     complete: bool) -> None:
    """The ``alignment`` check (``--pad-to-multiple-of``): config, column presence, padded spans, statistics.

    Args:
        stats: the manifest's ``stats``.
        decoded: per shard, what the shard checks decoded (None for a shard they could not decode, left to them).
        complete: every shard's bytes were read (the statistics are compared only then).
    """
    col.ran.add("alignment")
    if cfg.pad_problem is not None:  # found by the manifest's schema (format.manifest_field_problems)
        col.add("alignment", cfg.pad_problem)
        return
    capacity, multiple = cfg.capacity, cfg.pad_to_multiple_of
    padded_total = real_total = packs = 0
    for dec in decoded:
        if dec is None:
            continue
        spans = _check_padded_spans(dec, multiple, capacity, packs, col)
        if spans is not None:
            packs += spans[0]
            padded_total += spans[1]
            real_total += spans[2]
    if multiple is None:
        col.detail["alignment"] = f"not aligned (no --pad-to-multiple-of): no shard has {fmt.CU_SEQLENS_PADDED}"
        return
    if isinstance(stats, dict) and complete and col.counts["alignment"] == 0:
        want_stats = {"pad_to_multiple_of": multiple, "tokens_out_padded": padded_total,
                      "alignment_padding_tokens": padded_total - real_total}
        for key, have in want_stats.items():
            if stats.get(key) != have or isinstance(stats.get(key), bool):
                col.add("alignment", f"the shards give {key.replace('_', ' ')} = {have:,}, the manifest's stats say "
                        f"{stats.get(key)!r}")
    col.detail["alignment"] = (f"{packs:,} packs aligned to multiples of {multiple}: {padded_total - real_total:,} "
                               f"alignment padding tokens, every padded pack within {capacity:,}")


def _check_padded_spans(dec: DecodedShard, multiple: int | None, capacity: int, base: int, col: Collector
                        ) -> tuple[int, int, int] | None:
    """One shard's ``cu_seqlens_padded``: present exactly when the config has N, as many entries as ``cu_seqlens``,
    0 first, each span its sequence's length rounded up to a multiple of N, every padded pack within the capacity
    (vectorised).

    Args:
        base: global index of the shard's first pack, counted over the shards whose spans were read.

    Returns:
        ``(packs, padded tokens, real tokens)`` of the shard (tokens 0 when the entry counts differ), or None when
        it has no spans to read (unaligned, or the column is missing, unexpected, null or damaged).
    """
    name, table = dec.name, dec.table
    add = lambda msg, **where: col.add("alignment", msg, shard=name, **where)  # noqa: E731
    has = fmt.CU_SEQLENS_PADDED in table.schema.names
    if has != (multiple is not None):  # the rest of the schema is the schema check's (a legacy one included)
        add(f"has a {fmt.CU_SEQLENS_PADDED} column, but the config has no {fmt.CONFIG_PAD_TO_MULTIPLE_OF}" if has
            else f"has no {fmt.CU_SEQLENS_PADDED} column, but the config says {fmt.CONFIG_PAD_TO_MULTIPLE_OF} "
            f"{multiple}")
        return None
    if multiple is None:
        return None
    if table.column(fmt.CU_SEQLENS_PADDED).null_count:
        add(f"column {fmt.CU_SEQLENS_PADDED!r} holds nulls")
        return None
    try:
        cu_off, cu = _flat(table, fmt.CU_SEQLENS)
        pad_off, pad = _flat(table, fmt.CU_SEQLENS_PADDED)
    except fmt.ShardLayoutError as e:  # read here without the schema check's full validation
        add(f"its lists are damaged: {e.what}")
        return None
    rows = cu_off.shape[0] - 1
    at = lambda p: {"shard": name, "pack": base + int(p)}  # noqa: E731
    n_cu = np.diff(cu_off)
    differ = np.diff(pad_off) != n_cu
    col.many("alignment", np.flatnonzero(differ), lambda p: (
        f"{int(pad_off[p + 1] - pad_off[p])} {fmt.CU_SEQLENS_PADDED} entries for {int(cu_off[p + 1] - cu_off[p])} "
        f"{fmt.CU_SEQLENS} entries", at(p)))
    if differ.any():
        return rows, 0, 0
    cu64, pad64 = cu.astype(np.int64), pad.astype(np.int64)
    firsts = cu_off[:-1][n_cu > 0]
    last_entries = cu_off[1:][n_cu > 0] - 1
    # per entry step within its pack (the step across two packs' lists is not a sequence)
    real = np.diff(cu64)
    span = np.diff(pad64)
    inside = np.ones(real.shape[0], dtype=bool)
    inside[(cu_off[1:-1] - 1)[(cu_off[1:-1] - 1) < real.shape[0]]] = False
    want_span = (real + multiple - 1) // multiple * multiple
    bad_first = np.flatnonzero(pad64[firsts] != 0)
    col.many("alignment", bad_first, lambda j: (
        f"{fmt.CU_SEQLENS_PADDED} starts at {int(pad64[firsts[j]])}, not 0",
        at(np.searchsorted(cu_off, firsts[j], side="right") - 1)))
    bad = np.flatnonzero(inside & (span != want_span))
    col.many("alignment", bad, lambda e: (
        f"sequence {int(e - cu_off[np.searchsorted(cu_off, e, side='right') - 1])} of the pack has "
        f"{int(real[e]):,} tokens and a padded span of {int(span[e]):,}, not {int(want_span[e]):,} (its length "
        f"rounded up to a multiple of {multiple})", at(np.searchsorted(cu_off, e, side="right") - 1)))
    lasts = pad64[last_entries]
    over = np.flatnonzero(lasts > capacity)
    col.many("alignment", over, lambda p: (
        f"the padded pack has {int(lasts[p]):,} tokens, more than the capacity {capacity:,}", at(p)))
    return rows, int(lasts.sum()), int(cu64[last_entries].sum())
