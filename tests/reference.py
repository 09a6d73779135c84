"""Slow, obviously-correct pure-Python twins of the numba kernels in packer.kernels and packer.plan."""
from __future__ import annotations

import numpy as np


def sort_desc(lengths) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))


def best_fit(lengths_in_order, capacity) -> tuple[list[int], int]:
    """Each item into the open pack with the least room that fits; ties to the pack that got that room last."""
    room: list[int] = []
    stamp: list[int] = []  # when each pack's room last changed
    out = []
    for t, length in enumerate(lengths_in_order):
        fits = [p for p in range(len(room)) if room[p] >= length and room[p] > 0]
        if fits:
            best = min(room[p] for p in fits)
            p = max((p for p in fits if room[p] == best), key=lambda q: stamp[q])
        else:
            p = len(room)
            room.append(capacity)
            stamp.append(-1)
        room[p] -= length
        stamp[p] = t
        out.append(p)
    return out, len(room)


def first_fit(lengths_in_order, capacity) -> tuple[list[int], int]:
    room: list[int] = []
    out = []
    for length in lengths_in_order:
        for p, r in enumerate(room):
            if r >= length:
                break
        else:
            p = len(room)
            room.append(capacity)
        room[p] -= length
        out.append(p)
    return out, len(room)


def placement_order(lengths, *, strategy, seed, filler) -> list[int]:
    n = len(lengths)
    if strategy in ("bfd", "ffd"):
        return sort_desc(lengths)
    rng = np.random.default_rng(seed)
    if strategy == "shuffle":
        return [int(i) for i in rng.permutation(n)]
    by_length = sort_desc(lengths)
    n_fill = int(filler * n)
    body, fill = by_length[: n - n_fill], by_length[n - n_fill :]
    return [body[int(k)] for k in rng.permutation(len(body))] + fill


def plan(lengths, *, capacity, strategy, seed=0, filler=0.2) -> list[int]:
    """Pack id of every sequence (indexed like ``lengths``)."""
    order = placement_order(lengths, strategy=strategy, seed=seed, filler=filler)
    kernel = first_fit if strategy == "ffd" else best_fit
    slot_pack, _ = kernel([int(lengths[i]) for i in order], capacity)
    pack_ids = [0] * len(lengths)
    for j, i in enumerate(order):
        pack_ids[i] = slot_pack[j]
    return pack_ids


def segments(lengths, *, capacity, overflow) -> list[tuple[int, int, int]]:
    """(row, start, length) of every packed piece."""
    out = []
    for row, n in enumerate(lengths):
        n = int(n)
        if n == 0:
            continue
        if n <= capacity:
            out.append((row, 0, n))
        elif overflow == "truncate":
            out.append((row, 0, capacity))
        elif overflow == "split":
            for start in range(0, n, capacity):
                out.append((row, start, min(capacity, n - start)))
    return out


def group_by_pack(slot_pack, order, slot_lengths, n_packs):
    """``(pack_ids, members, pack_offsets, pack_tokens)`` as lists: members grouped by pack, placement order kept."""
    by_pack = [[] for _ in range(n_packs)]
    tokens = [0] * n_packs
    pack_ids = [0] * len(order)
    for p, i, n in zip(slot_pack, order, slot_lengths):
        by_pack[p].append(int(i))
        tokens[p] += int(n)
        pack_ids[int(i)] = int(p)
    offsets = [0]
    for members in by_pack:
        offsets.append(offsets[-1] + len(members))
    return pack_ids, [i for members in by_pack for i in members], offsets, tokens


def gather(values, src, lengths, dst, out_len):
    """``(out, lo, hi)``: the copied segments laid out at ``dst`` in a fresh list of ``out_len`` zeros, and the
    smallest and largest value copied ((0, 0) when nothing is copied)."""
    out = [0] * out_len
    copied = []
    for s, n, d in zip(src, lengths, dst):
        seg = [int(v) for v in values[s : s + n]]
        out[d : d + n] = seg
        copied += seg
    return out, (min(copied) if copied else 0), (max(copied) if copied else 0)


def first_not_label(labels, ignore_index) -> int:
    return next((i for i, v in enumerate(labels) if v < 0 and v != ignore_index), -1)
