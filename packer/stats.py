"""Packing statistics: computed once from the segments and the plan, kept in the manifest, printed by the CLI."""
from __future__ import annotations

import numpy as np

from packer.plan import PackPlan, Segments, padded_lengths


def loss_counts(*, dropped_rows: int, dropped_tokens: int, truncated_tokens: int, untrainable_rows: int = 0,
                untrainable_tokens: int = 0) -> tuple[int, int]:
    """The sequences and tokens a packing loses: the one definition behind ``packer pack``'s warning and
    ``--max-loss``, the statistics ``loss_sequences``/``loss_tokens`` and ``packer report``'s ``data_loss`` warning.

    A sequence is lost when dropped or left with no trained token; a truncated one that still trains loses only the
    tokens cut off, so nothing is counted twice. Tokens lost: dropped, cut off, and those of untrainable sequences.
    """
    return dropped_rows + untrainable_rows, dropped_tokens + truncated_tokens + untrainable_tokens


def loss_shares(*, rows: int, tokens: int, **counts: int) -> tuple[float, float]:
    """:func:`loss_counts` (its keyword arguments) as shares of the input's ``rows`` and ``tokens``.

    Returns:
        ``(sequence share, token share)``, each in [0, 1] (0 for an empty input).
    """
    lost_rows, lost_tokens = loss_counts(**counts)
    return (lost_rows / rows if rows else 0.0), (lost_tokens / tokens if tokens else 0.0)


LOSS_WARNING = 0.01
"""A share of the input's tokens or sequences lost (dropped, truncated, or left with no trained token) above which
``packer pack`` warns on stderr with the option that keeps them (``--max-loss`` makes it an error), and ``packer
report`` warns and does not recommend packing (its ``--loss-warning`` default)."""


def compute_stats(lengths: np.ndarray, segments: Segments, plan: PackPlan, *, label_tokens: int | None = None,
                  untrainable: tuple[int, int] | None = None) -> dict:
    """Statistics of a plan (JSON-ready: ints, floats and strings only).

    ``efficiency = tokens / (packs * capacity)``; ``padding_overhead = 1 - efficiency`` (the share of pack slots
    that hold padding); ``lower_bound = ceil(tokens / capacity)``.

    ``packs_all_short`` measures mixing: the share of packs whose sequences are all shorter than the median
    input length. Length-sorted strategies (bfd, ffd) leave many such packs at the end; mixed ones almost none.

    ``untrainable`` is ``(sequences, tokens)`` of the packed sequences left with no trained token (every label
    ``-100`` once each sequence's first label is masked), stored as ``sequences_untrainable`` and
    ``tokens_untrainable``. ``data_loss_*`` count dropped and truncated rows and tokens. ``loss_tokens`` is the
    share of the input's tokens not trained on: dropped, cut off, or in an untrainable sequence;
    ``loss_sequences`` the share of sequences lost: dropped, or untrainable (a truncated sequence that still
    trains loses only tokens). These are the shares ``--max-loss`` limits.
    """
    n_packs = plan.n_packs
    per_pack = np.diff(plan.pack_offsets)
    tokens_out = plan.tokens
    median = float(np.median(lengths[lengths > 0])) if np.any(lengths > 0) else 0.0
    all_short = 0
    if n_packs:
        seg_long = (segments.length >= median).astype(np.int64)
        long_per_pack = np.add.reduceat(seg_long[plan.members], plan.pack_offsets[:-1]) if plan.members.size else 0
        all_short = int(np.count_nonzero(long_per_pack == 0))
    lost_tokens = segments.dropped_tokens + segments.truncated_tokens
    lost_rows = segments.dropped_rows + segments.truncated_rows
    stats = {
        "sequences_in": segments.n_rows,
        "tokens_in": segments.tokens_in,
        "empty_sequences_skipped": segments.empty_rows,
        "sequences_dropped": segments.dropped_rows,
        "tokens_dropped": segments.dropped_tokens,
        "sequences_truncated": segments.truncated_rows,
        "tokens_truncated": segments.truncated_tokens,
        "sequences_split": segments.split_rows,
        "sequences_out": int(segments.row.shape[0]),
        "tokens_out": tokens_out,
        "packs": n_packs,
        "capacity": plan.capacity,
        "lower_bound_packs": plan.lower_bound,
        "packs_over_lower_bound": n_packs - plan.lower_bound,
        "packing_efficiency": plan.efficiency,
        "padding_tokens": n_packs * plan.capacity - tokens_out,
        "padding_overhead": 1.0 - plan.efficiency,
        "sequences_per_pack_mean": float(per_pack.mean()) if n_packs else 0.0,
        "sequences_per_pack_min": int(per_pack.min()) if n_packs else 0,
        "sequences_per_pack_max": int(per_pack.max()) if n_packs else 0,
        "packs_all_short": all_short / n_packs if n_packs else 0.0,
        "mean_length_in": float(lengths.mean()) if lengths.size else 0.0,
        "max_length_in": int(lengths.max()) if lengths.size else 0,
        "data_loss_sequences": lost_rows / segments.n_rows if segments.n_rows else 0.0,
        "data_loss_tokens": lost_tokens / segments.tokens_in if segments.tokens_in else 0.0,
    }
    if label_tokens is not None:
        stats["label_tokens"] = int(label_tokens)
    if untrainable is not None:
        seqs, toks = (int(x) for x in untrainable)
        stats["sequences_untrainable"] = seqs
        stats["tokens_untrainable"] = toks
        stats["loss_sequences"], stats["loss_tokens"] = loss_shares(
            rows=segments.n_rows, tokens=segments.tokens_in, dropped_rows=segments.dropped_rows,
            dropped_tokens=segments.dropped_tokens, truncated_tokens=segments.truncated_tokens,
            untrainable_rows=seqs, untrainable_tokens=toks)
    return stats


def alignment_stats(segments: Segments, plan: PackPlan, multiple: int) -> dict:
    """The statistics of ``--pad-to-multiple-of`` (added to :func:`compute_stats`'s only for aligned folders).

    Alignment padding is the padding inside the sequences' padded spans; ``packing_efficiency`` and
    ``padding_tokens`` of :func:`compute_stats` already count it as waste (they count real tokens only), and
    ``end_padding_tokens`` is the rest of the padding, at the packs' ends.

    Keys: ``pad_to_multiple_of`` (N), ``alignment_padding_tokens``, ``alignment_padding_overhead`` (their share
    of the packs' ``packs * capacity`` slots), ``end_padding_tokens``, ``tokens_out_padded`` (``tokens_out`` plus
    the alignment padding) and ``lower_bound_packs_padded`` (``ceil(tokens_out_padded / capacity)``: no plan of
    the padded lengths can use fewer packs).
    """
    padded = int(padded_lengths(segments.length.astype(np.int64), multiple).sum())
    tokens_out = plan.tokens
    slots = plan.n_packs * plan.capacity
    return {
        "pad_to_multiple_of": int(multiple),
        "alignment_padding_tokens": padded - tokens_out,
        "alignment_padding_overhead": (padded - tokens_out) / slots if slots else 0.0,
        "end_padding_tokens": slots - padded,
        "tokens_out_padded": padded,
        "lower_bound_packs_padded": -(-padded // plan.capacity),
    }


def format_stats(stats: dict, timings: dict | None = None) -> str:
    """Human-readable summary of :func:`compute_stats` output (and optional per-phase seconds)."""
    s = stats
    lines = [
        f"sequences in        {s['sequences_in']:>14,}   tokens in   {s['tokens_in']:>16,}",
        f"sequences out       {s['sequences_out']:>14,}   tokens out  {s['tokens_out']:>16,}",
        f"packs               {s['packs']:>14,}   lower bound {s['lower_bound_packs']:>16,}  "
        f"(+{s['packs_over_lower_bound']:,})",
        f"capacity            {s['capacity']:>14,}   padding     {s['padding_tokens']:>16,}",
        f"packing efficiency  {s['packing_efficiency']:>14.3%}   padding overhead {s['padding_overhead']:>11.3%}",
        f"sequences per pack  mean {s['sequences_per_pack_mean']:.2f}, min {s['sequences_per_pack_min']}, "
        f"max {s['sequences_per_pack_max']}; packs of only below-median sequences {s['packs_all_short']:.1%}",
        f"data loss           {s['sequences_dropped'] + s['sequences_truncated']:,} sequences "
        f"({s['data_loss_sequences']:.3%}), {s['tokens_dropped'] + s['tokens_truncated']:,} tokens "
        f"({s['data_loss_tokens']:.3%}): dropped {s['sequences_dropped']:,}, truncated {s['sequences_truncated']:,}; "
        f"split {s['sequences_split']:,}; empty skipped {s['empty_sequences_skipped']:,}",
    ]
    if "alignment_padding_tokens" in s:
        lines.append(f"alignment padding   {s['alignment_padding_tokens']:>14,}   (--pad-to-multiple-of "
                     f"{s['pad_to_multiple_of']}: {s['alignment_padding_overhead']:.3%} of the slots; "
                     f"{s['end_padding_tokens']:,} padding at pack ends)")
    if "label_tokens" in s:
        lines.append(f"label tokens        {s['label_tokens']:>14,}   (tokens the loss is computed on)")
    if "sequences_untrainable" in s:
        lines.append(f"untrainable         {s['sequences_untrainable']:>14,} sequences with no trained token "
                     f"({s['tokens_untrainable']:,} tokens); not trained on in all: {s['loss_tokens']:.3%} of "
                     "tokens")
    if timings:
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
        lines.append(f"time                {parts}")
    return "\n".join(lines)
