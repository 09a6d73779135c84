"""--pad-to-multiple-of and context parallelism: aligned packing, verify, aligned items, and the CP ranks' slices.

Inputs come from ``tests._torch_helpers``: sequence ``i`` is ``[i + 1] * n_i`` with its first ``n_i // 3`` labels
masked, so a token names its sequence and any mix-up shows.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from packer import format as fmt
from packer.cli import main
from packer.convert import PackConfig, pack_dataset
from packer.errors import PackerError
from packer.plan import plan_packs
from packer.input import Columns
from packer.torch import (
    PACKED_SEQ_PARAMS_KEYS,
    ContextParallelCollator,
    PackedCollator,
    PackedDataset,
    cp_partition_indices,
)
from packer.verify import verify_packed
from tests._torch_helpers import IGNORE, expected_sequences, write_input

N = 8
CAPACITY = 64
# every residue mod 8, a 1-token sequence (no trained label), one exactly at the capacity, one over it (split)
LENGTHS = [5, 13, 8, 1, 30, 17, 64, 2, 9, 23, 7, 40, 3, 16, 11, 6, 90, 4, 25, 15]


def pack(tmp_path, lengths=LENGTHS, *, multiple=N, capacity=CAPACITY, **kw):
    src = write_input(tmp_path / "input.arrow", lengths)
    config = PackConfig(capacity=capacity, columns=Columns(labels="labels"), overflow="split", shard_size=4,
                        pad_to_multiple_of=multiple, **kw)
    out = tmp_path / f"packed-{multiple}-{kw.get('plan', 'global')}"
    return src, out, pack_dataset(src, out, config=config, progress=False, verify=True)


def shard_rows(folder):
    manifest = json.loads((folder / fmt.MANIFEST_FILE).read_text())
    rows = []
    for s in manifest[fmt.MANIFEST_SHARDS]:
        with pa.memory_map(str(folder / s["file"])) as f:
            table = pa.ipc.open_stream(f).read_all()
        rows += table.to_pylist()
    return rows


def split_lengths(lengths, capacity):
    return [min(capacity, n - k) for n in lengths for k in range(0, n, capacity)]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return pack(tmp_path_factory.mktemp("cp"))[1]


# ------------------------------------------------------------------------------------------------- packing


def test_plan_counts_padded_lengths():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 200, 500).astype(np.int32)
    for multiple in (1, 8, 16):
        plan = plan_packs(lengths, capacity=512, pad_to_multiple_of=multiple, strategy="mixed")
        padded = -(-lengths.astype(np.int64) // multiple) * multiple  # independent rounding
        got_padded = [int(padded[plan.members[a:b]].sum()) for a, b in zip(plan.pack_offsets[:-1],
                                                                          plan.pack_offsets[1:])]
        got_real = [int(lengths[plan.members[a:b]].sum()) for a, b in zip(plan.pack_offsets[:-1],
                                                                         plan.pack_offsets[1:])]
        assert plan.pack_tokens_padded.tolist() == got_padded and max(got_padded) <= 512
        assert plan.pack_tokens.tolist() == got_real
        assert sorted(plan.members.tolist()) == list(range(500))
    assert plan_packs(lengths, capacity=512).pack_tokens_padded is None


@pytest.mark.parametrize("bad", [0, -8, True, 2.0, "8"])
def test_bad_multiple_is_refused(bad):
    with pytest.raises(PackerError, match="pad_to_multiple_of"):
        PackConfig(capacity=64, pad_to_multiple_of=bad)


def test_capacity_must_be_a_multiple():
    # the Python error names the parameters; the command line names its flags
    with pytest.raises(PackerError, match=r"PackConfig\(capacity=100\): must be a multiple of the alignment, 16 .*96 or 112"):
        PackConfig(capacity=100, pad_to_multiple_of=16)
    assert main(["pack", "nowhere", "-o", "out", "--max-length", "100", "--pad-to-multiple-of", "16"]) == 2


def test_without_the_option_nothing_is_added(tmp_path):
    assert fmt.CONFIG_PAD_TO_MULTIPLE_OF not in PackConfig().to_json()
    src = write_input(tmp_path / "input.arrow", LENGTHS)
    out = tmp_path / "plain"
    m = pack_dataset(src, out, config=PackConfig(capacity=CAPACITY, overflow="split"), progress=False)
    assert fmt.CONFIG_PAD_TO_MULTIPLE_OF not in m[fmt.MANIFEST_CONFIG]
    assert not any(k.startswith("alignment") for k in m[fmt.MANIFEST_STATS])
    assert fmt.CU_SEQLENS_PADDED not in shard_rows(out)[0]
    assert fmt.CU_SEQLENS_PADDED not in json.loads((out / fmt.HF_INFO_FILE).read_text())["features"]
    item = PackedDataset(out)[0]
    assert "cu_seqlens_padded" not in item and "cu_seqlens_padded" not in PackedCollator()([item])
    assert verify_packed(out).check("alignment").status == "ok"


@pytest.mark.parametrize("plan", ["global", "grouped"])
def test_aligned_shards_and_stats(tmp_path, plan):
    _, out, m = pack(tmp_path, plan=plan)
    assert m[fmt.MANIFEST_CONFIG][fmt.CONFIG_PAD_TO_MULTIPLE_OF] == N
    rows = shard_rows(out)
    real_all, alignment = [], 0
    for r in rows:
        real = np.diff(r[fmt.CU_SEQLENS])
        span = np.diff(r[fmt.CU_SEQLENS_PADDED])
        assert r[fmt.CU_SEQLENS_PADDED][0] == 0 and r[fmt.CU_SEQLENS_PADDED][-1] <= CAPACITY
        assert (span % N == 0).all() and (span >= real).all() and (span - real < N).all()
        real_all += real.tolist()
        alignment += int((span - real).sum())
    assert sorted(real_all) == sorted(split_lengths(LENGTHS, CAPACITY))
    s = m[fmt.MANIFEST_STATS]
    assert s["alignment_padding_tokens"] == alignment == sum(-n % N for n in split_lengths(LENGTHS, CAPACITY))
    assert s["tokens_out_padded"] == s["tokens_out"] + alignment
    assert s["end_padding_tokens"] + alignment == s["padding_tokens"] == s["packs"] * CAPACITY - s["tokens_out"]
    assert s["pad_to_multiple_of"] == N
    assert fmt.CU_SEQLENS_PADDED in json.loads((out / fmt.HF_INFO_FILE).read_text())["features"]


def test_cli_flag(tmp_path, capsys):
    src = write_input(tmp_path / "input.arrow", LENGTHS)
    out = tmp_path / "cli"
    assert main(["pack", str(src), "-o", str(out), "--max-length", "64", "--overflow", "split",
                 "--pad-to-multiple-of", "16", "--verify"]) == 0
    assert "alignment padding" in capsys.readouterr().out
    assert json.loads((out / fmt.MANIFEST_FILE).read_text())[fmt.MANIFEST_CONFIG]["pad_to_multiple_of"] == 16


def _rewrite(folder, index, mutate):
    """Rewrite shard ``index`` with ``mutate(rows)`` applied, fixing its size and checksum and resealing."""
    from packer.format import file_checksum, seal_manifest

    manifest = json.loads((folder / fmt.MANIFEST_FILE).read_text())
    entry = manifest[fmt.MANIFEST_SHARDS][index]
    path = folder / entry["file"]
    with pa.memory_map(str(path)) as f:
        table = pa.ipc.open_stream(f).read_all()
    rows = table.to_pylist()
    schema = mutate(rows) or table.schema
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        w.write_table(table)
    entry.update(bytes=path.stat().st_size, xxh3_128=file_checksum(path))
    (folder / fmt.MANIFEST_FILE).write_text(json.dumps(seal_manifest(manifest), indent=2))


def test_verify_catches_wrong_padded_spans(tmp_path):
    _, out, _ = pack(tmp_path)

    def shrink(rows):
        cp = rows[0][fmt.CU_SEQLENS_PADDED]
        cp[1:] = [c - N for c in cp[1:]] if cp[1] - cp[0] > N else [c + N for c in cp[1:]]

    _rewrite(out, 0, shrink)
    report = verify_packed(out)
    assert report.failed() == ["alignment"]
    assert "padded span" in report.format()
    with pytest.raises(PackerError, match="cu_seqlens_padded"):
        for i in range(len(PackedDataset(out))):
            PackedDataset(out)[i]


def test_verify_catches_a_missing_column(tmp_path):
    _, out, _ = pack(tmp_path)
    _rewrite(out, 1, lambda rows: fmt.SCHEMA)
    report = verify_packed(out)
    assert report.failed() == ["alignment"]
    assert "has no cu_seqlens_padded column" in report.format()


# ------------------------------------------------------------------------------------------------- items


def numpy_aligned_layout(ids, labels, cu, cu_pad, length, pad_id):
    """The slow reference of kernels.fill_aligned_pack: scatter each sequence to its padded span."""
    lens, spans = np.diff(cu), np.diff(cu_pad)
    out = np.empty((3, length), dtype=np.int64)
    out[0], out[1] = pad_id, IGNORE
    dst = np.arange(ids.shape[0]) + np.repeat(cu_pad[:-1] - cu[:-1], lens)
    out[0, dst], out[1, dst] = ids, labels
    total = cu_pad[-1]
    out[2, :total] = np.arange(total) - np.repeat(cu_pad[:-1], spans)
    out[2, total:] = np.arange(length - total) % max(int(spans.max()), 1)  # restarts every longest span
    is_pad = np.ones(length, dtype=bool)
    is_pad[dst] = False
    out[2, is_pad] = np.minimum(out[2, is_pad], int(lens.max()) - 1)  # no padding position past a real one
    return out


def test_aligned_kernel_matches_the_numpy_reference():
    from packer import kernels

    rng = np.random.default_rng(5)
    for _ in range(200):
        k = int(rng.integers(1, 12))
        lens = rng.integers(1, 40, k)
        spans = lens + rng.integers(0, 9, k)
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        cu_pad = np.concatenate([[0], np.cumsum(spans)]).astype(np.int32)
        ids = rng.integers(1, 1000, cu[-1]).astype(np.int32)
        labels = np.where(rng.random(cu[-1]) < 0.3, IGNORE, ids).astype(np.int32)
        labels[cu[:-1]] = IGNORE
        length = int(cu_pad[-1] + rng.integers(0, 20))
        rows = np.full((3, length), 7, dtype=np.int64)
        period, top = int(np.diff(cu_pad).max()), int(lens.max()) - 1
        count, bad = kernels.fill_aligned_pack(ids, labels, cu, cu_pad, rows[0], rows[1], rows[2], 0, IGNORE, period,
                                               top)
        assert (rows == numpy_aligned_layout(ids, labels, cu, cu_pad, length, 0)).all()
        assert count == int((labels != IGNORE).sum()) and bad == -1
        labels[cu[k - 1]] = 5
        assert kernels.fill_aligned_pack(ids, labels, cu, cu_pad, rows[0], rows[1], rows[2], 0, IGNORE,
                                         period, top)[1] == k - 1


def expected_layout(item, offsets):
    """Check an aligned item against the input sequences (``offsets``: its row's ``seq_offset``, where each
    sequence starts in its input row); return [(sequence id, real length)]."""
    seqs = expected_sequences(LENGTHS)
    ids, labels, pos = (item[k].numpy() for k in ("input_ids", "labels", "position_ids"))
    cu_pad = item["cu_seqlens_padded"].numpy()
    cu_real = item["cu_seqlens_unpadded"].numpy()
    assert torch.equal(item["cu_seqlens"], item["cu_seqlens_padded"]) and cu_pad[-1] == ids.shape[0]
    assert cu_real.shape == cu_pad.shape
    n_real = int((ids[cu_pad[:-1]] != 0).sum())  # sequences (ids >= 1) first, then the padding segments
    assert (ids[cu_pad[:n_real]] != 0).all()
    longest = int(np.diff(cu_pad)[:n_real].max())
    top = int(np.diff(cu_real)[:n_real].max()) - 1  # the longest real sequence's last position
    assert pos.max() == top  # no padding position exceeds a real one (rope scaling, learned position tables)
    out = []
    for k in range(cu_pad.shape[0] - 1):
        a, span, n = int(cu_pad[k]), int(cu_pad[k + 1] - cu_pad[k]), int(cu_real[k + 1] - cu_real[k])
        sid = int(ids[a])
        real = n if sid != 0 else 0  # a final padding segment counts whole in cu_seqlens_unpadded
        # positions continue through the alignment padding, capped at the longest real sequence's last one
        assert pos[a : a + span].tolist() == [min(j, top) if j >= real else j for j in range(span)]
        if sid == 0:  # the final padding segments: only pad ids from here on, none longer than the longest span
            assert n == span and (labels[a:] == IGNORE).all() and (ids[a:] == 0).all()
            assert span % N == 0 and span <= longest
            continue
        want_ids, want_labels = seqs[sid]
        start = offsets[k]
        assert ids[a : a + n].tolist() == want_ids[start : start + n].tolist()
        exp_labels = want_labels[start : start + n].copy()
        exp_labels[0] = IGNORE
        assert labels[a : a + n].tolist() == exp_labels.tolist()
        assert span == -(-n // N) * N
        assert (ids[a + n : a + span] == 0).all() and (labels[a + n : a + span] == IGNORE).all()
        out.append((sid, n))
    return out


def test_aligned_items(aligned):
    ds = PackedDataset(aligned)
    rows = shard_rows(aligned)
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].shape == (CAPACITY,) and item["input_ids"].dtype == torch.int64
        seen += expected_layout(item, rows[i][fmt.SEQ_OFFSET])
        assert item["num_tokens"] == rows[i][fmt.CU_SEQLENS][-1]
        assert item["num_label_tokens"] == int((item["labels"] != IGNORE).sum())
        short = PackedDataset(aligned, pad=False, dtype=torch.int32)[i]
        assert short["input_ids"].shape == (rows[i][fmt.CU_SEQLENS_PADDED][-1],)
        assert short["input_ids"].dtype == torch.int32
        assert torch.equal(short["input_ids"].long(), item["input_ids"][: short["input_ids"].shape[0]])
    assert sorted(n for _, n in seen) == sorted(split_lengths(LENGTHS, CAPACITY))


def test_aligned_items_carry_sequence_ids(aligned):
    """sequence_ids=True on an aligned folder: the pack's provenance, then -1/0 for each padding segment."""
    ds = PackedDataset(aligned, sequence_ids=True)
    rows = shard_rows(aligned)
    for i in range(len(ds)):
        item = ds[i]
        k = len(rows[i][fmt.SEQ_INDEX])
        segments = item["cu_seqlens"].shape[0] - 1
        assert item["seq_index"].tolist() == rows[i][fmt.SEQ_INDEX] + [-1] * (segments - k)
        assert item["seq_offset"].tolist() == rows[i][fmt.SEQ_OFFSET] + [0] * (segments - k)


@pytest.mark.parametrize("flatten", [False, True])
def test_collated_batches_carry_padded_boundaries_and_seq_idx(aligned, flatten):
    ds = PackedDataset(aligned)
    items = [ds[i] for i in (2, 0, 1)]
    batch = PackedCollator(flatten=flatten, seq_idx=True)(items)
    assert torch.equal(batch["cu_seqlens_padded"], batch["cu_seqlens"])
    real = torch.cat([torch.diff(it["cu_seqlens_unpadded"]) for it in items])
    assert torch.equal(torch.diff(batch["cu_seqlens_unpadded"]), real.int())
    seq_idx = batch["seq_idx"]
    assert seq_idx.dtype == torch.int32 and seq_idx.shape == batch["input_ids"].shape
    if flatten:
        want = torch.repeat_interleave(torch.arange(len(real)), torch.diff(batch["cu_seqlens"].long()))
        assert torch.equal(seq_idx[0].long(), want)
    else:
        for row, it in zip(seq_idx, items):
            want = torch.repeat_interleave(torch.arange(len(it["cu_seqlens"]) - 1), torch.diff(it["cu_seqlens"].long()))
            assert torch.equal(row.long(), want)
    hf = PackedCollator(keys="hf")(items)
    assert "cu_seqlens_padded" not in hf and "seq_idx" not in hf


# ------------------------------------------------------------------------------------------------- context parallel


def test_partition_indices_zigzag():
    # one 16-token span over 2 ranks: chunks of 4, rank 0 takes chunks 0 and 3, rank 1 chunks 1 and 2
    assert cp_partition_indices([0, 16], 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert cp_partition_indices([0, 16], 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert cp_partition_indices([0, 5], 1, 0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(PackerError, match="not a multiple of 2 x cp_size = 8"):
        cp_partition_indices([0, 8, 12], 4, 0)


def rank_batches(ds, indices, cp_size):
    items = [ds[i] for i in indices]
    return items, [ContextParallelCollator.for_dataset(ds, cp_size=cp_size, cp_rank=r)(items) for r in range(cp_size)]


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_ranks_put_back_together_give_the_padded_pack(aligned, cp_size):
    ds = PackedDataset(aligned)
    for indices in ([0], [3, 1, 2]):
        items, ranks = rank_batches(ds, indices, cp_size)
        full = {k: torch.cat([it[k] for it in items]) for k in ("input_ids", "labels", "position_ids")}
        cu = ranks[0]["cu_seqlens_q_padded"].tolist()
        total = cu[-1]
        assert all(b["input_ids"].shape == (1, total // cp_size) for b in ranks)
        # the documented order: per span, rank r holds chunk r then chunk 2 cp - 1 - r, spans back to back
        rebuilt = {k: torch.full((total,), -7, dtype=torch.int64) for k in full}
        for a, b in zip(cu[:-1], cu[1:]):
            chunk = (b - a) // (2 * cp_size)
            local = a // cp_size
            for j in range(2 * cp_size):
                r = j if j < cp_size else 2 * cp_size - 1 - j
                at = local + (0 if j < cp_size else chunk)
                for k in full:
                    rebuilt[k][a + j * chunk : a + (j + 1) * chunk] = ranks[r][k][0, at : at + chunk]
        for k in full:
            assert torch.equal(rebuilt[k], full[k].long()), k
        for b in ranks:
            assert b["cu_seqlens_q_padded"].dtype == torch.int32
            assert torch.equal(b["cu_seqlens_q"], b["cu_seqlens_kv"])
            assert torch.equal(b["cu_seqlens_q"], torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(
                torch.cat([torch.diff(it["cu_seqlens_unpadded"]) for it in items]), 0).int()]))
            assert torch.equal(b["cu_seqlens_q_padded"], torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(
                torch.cat([torch.diff(it["cu_seqlens_padded"]) for it in items]), 0).int()]))
            assert torch.equal(b["cu_seqlens_kv_padded"], b["cu_seqlens_q_padded"])
            assert b["max_seqlen_q"] == b["max_seqlen_kv"] == max(int(torch.diff(it["cu_seqlens_padded"]).max()) for it in items)
            assert set(PACKED_SEQ_PARAMS_KEYS) <= set(b)
        assert sum(int((b["shift_labels"] != IGNORE).sum()) for b in ranks) == ranks[0]["num_label_tokens"] \
            == sum(it["num_label_tokens"] for it in items)


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_each_rank_holds_its_sequences_own_positions_and_labels(aligned, cp_size):
    ds = PackedDataset(aligned)
    rows = shard_rows(aligned)
    seqs = expected_sequences(LENGTHS)
    indices = [1, 0]
    items, ranks = rank_batches(ds, indices, cp_size)
    # segment number in the flattened batch -> (input row's tokens, labels, offset, real length), None for padding
    segments = []
    for i in indices:
        r = rows[i]
        for k, row in enumerate(r[fmt.SEQ_INDEX]):
            segments.append((*seqs[row + 1], r[fmt.SEQ_OFFSET][k], r[fmt.CU_SEQLENS][k + 1] - r[fmt.CU_SEQLENS][k]))
        if r[fmt.CU_SEQLENS_PADDED][-1] < CAPACITY:
            segments.append(None)
    for b in ranks:
        ids, labels, shift, pos, sidx = (b[k][0].tolist() for k in ("input_ids", "labels", "shift_labels",
                                                                      "position_ids", "seq_idx"))
        assert b["seq_idx"].dtype == torch.int32
        for t in range(len(ids)):
            seg = segments[sidx[t]]
            p = pos[t]
            if seg is None or p >= seg[3]:  # final or alignment padding
                assert (ids[t], labels[t], shift[t]) == (0, IGNORE, IGNORE)
                continue
            want_ids, want_labels, off, n = seg
            assert ids[t] == want_ids[off + p]
            assert labels[t] == (IGNORE if p == 0 else want_labels[off + p])
            assert shift[t] == (want_labels[off + p + 1] if p + 1 < n else IGNORE)


def _unpacked_attention(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = q @ k.T / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_causal_attention_per_rank_equals_the_unpacked_sequences(aligned, cp_size):
    """Each rank's queries against the keys of their own sequence up to their position, with the whole sequence's
    K/V gathered from all ranks as ring attention does, equal attention over each sequence alone."""
    ds = PackedDataset(aligned)
    rows = shard_rows(aligned)
    seqs = expected_sequences(LENGTHS)
    g = torch.Generator().manual_seed(0)
    dim = 16
    tok_emb = torch.randn(len(LENGTHS) + 1, dim, generator=g, dtype=torch.float64)
    pos_emb = torch.randn(CAPACITY, dim, generator=g, dtype=torch.float64)
    wq, wk, wv = (torch.randn(dim, dim, generator=g, dtype=torch.float64) for _ in range(3))
    indices = [0, 2]
    items, ranks = rank_batches(ds, indices, cp_size)

    def embed(b):
        return tok_emb[b["input_ids"][0]] + pos_emb[b["position_ids"][0]]

    # K/V of the whole batch, as the ring passes them around: every rank's tokens with their sequence and position
    keys_x = torch.cat([embed(b) for b in ranks])
    keys_seq = torch.cat([b["seq_idx"][0] for b in ranks]).long()
    keys_pos = torch.cat([b["position_ids"][0] for b in ranks]).long()
    k_all, v_all = keys_x @ wk, keys_x @ wv
    cu_real = ranks[0]["cu_seqlens_q"].long()
    # the unpacked reference, per segment of the batch (real tokens only)
    reference = []
    for i in indices:
        r = rows[i]
        for k, row in enumerate(r[fmt.SEQ_INDEX]):
            n = r[fmt.CU_SEQLENS][k + 1] - r[fmt.CU_SEQLENS][k]
            off = r[fmt.SEQ_OFFSET][k]
            toks = torch.as_tensor(seqs[row + 1][0][off : off + n])
            x = tok_emb[toks] + pos_emb[torch.arange(n)]
            reference.append(_unpacked_attention(x, wq, wk, wv))
        if r[fmt.CU_SEQLENS_PADDED][-1] < CAPACITY:
            reference.append(None)
    checked = 0
    for b in ranks:
        q = embed(b) @ wq
        seq, pos = b["seq_idx"][0].long(), b["position_ids"][0].long()
        allowed = (seq[:, None] == keys_seq[None, :]) & (keys_pos[None, :] <= pos[:, None])
        scores = (q @ k_all.T / dim**0.5).masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, -1) @ v_all
        for t in range(q.shape[0]):
            s, p = int(seq[t]), int(pos[t])
            n = int(cu_real[s + 1] - cu_real[s])
            if reference[s] is None or p >= n:
                continue  # padding: its output is never scored
            torch.testing.assert_close(out[t], reference[s][p], rtol=1e-12, atol=1e-12)
            checked += 1
    assert checked == sum(it["num_tokens"] for it in items)


def test_cp_errors(tmp_path, aligned):
    ds = PackedDataset(aligned)
    with pytest.raises(PackerError, match="not a multiple of 2 x cp_size = 16"):
        ContextParallelCollator.for_dataset(ds, cp_size=8, cp_rank=0)
    with pytest.raises(PackerError, match="cp_rank"):
        ContextParallelCollator(cp_size=2, cp_rank=2)
    with pytest.raises(PackerError, match="not a multiple of 2 x cp_size = 16"):
        odd = next(ds[i] for i in range(len(ds)) if (torch.diff(ds[i]["cu_seqlens_padded"]) % 16).any())
        ContextParallelCollator(cp_size=8, cp_rank=1)([odd])
    src = write_input(tmp_path / "input.arrow", LENGTHS)
    plain = tmp_path / "plain"
    pack_dataset(src, plain, config=PackConfig(capacity=CAPACITY, overflow="split"), progress=False)
    with pytest.raises(PackerError, match="--pad-to-multiple-of 4"):
        ContextParallelCollator.for_dataset(PackedDataset(plain), cp_size=2, cp_rank=0)
    with pytest.raises(PackerError, match="--pad-to-multiple-of"):
        ContextParallelCollator(cp_size=2, cp_rank=0)([PackedDataset(plain)[0]])


def test_batches_cross_dataloader_workers(aligned):
    """Aligned items and CP batches ship through a worker's shared-memory transport unchanged."""
    from torch.utils.data import DataLoader

    ds = PackedDataset(aligned)
    for collate in (PackedCollator(seq_idx=True), ContextParallelCollator.for_dataset(ds, cp_size=2, cp_rank=1)):
        want = [collate([ds[i], ds[i + 1]]) for i in (0, 2)]
        got = list(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate))[:2]
        for a, b in zip(want, got):
            assert set(a) == set(b)
            for k in a:
                assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k


@pytest.mark.parametrize("bad", ["8", 0, 7, None])
def test_reader_refuses_a_bad_multiple_in_the_manifest(tmp_path, bad):
    from packer.format import seal_manifest

    _, out, _ = pack(tmp_path)
    path = out / fmt.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest[fmt.MANIFEST_CONFIG][fmt.CONFIG_PAD_TO_MULTIPLE_OF] = bad
    path.write_text(json.dumps(seal_manifest(manifest)))
    assert verify_packed(out).failed() == ["alignment"]
    if bad is None:  # read as unaligned: the shards' extra column is what verify reports
        assert "has a cu_seqlens_padded column" in verify_packed(out).format()
        return
    with pytest.raises(PackerError, match="pad_to_multiple_of"):
        PackedDataset(out)
