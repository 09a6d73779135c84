"""PackedDataset and PackedReader: items against the input sequences, padding conventions, bad folders."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from packer import format as fmt
from packer import kernels
from packer.errors import PackerError
from packer.packed_reader import PackedReader
from packer.torch import PackedCollator, PackedDataset

from tests._manifest_helpers import rewrite_manifest
from tests._torch_helpers import IGNORE, expected_sequences, make_packed, random_lengths, run_python

CAP = 96


@pytest.fixture(scope="module")
def lengths():
    return random_lengths(120, capacity=CAP, seed=3)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, lengths):
    # shard_size 7: several shards, so global indices cross shard boundaries
    return make_packed(tmp_path_factory.mktemp("ds"), lengths, capacity=CAP, shard_size=7)


def test_import_packer_does_not_import_torch():
    code = (
        "import sys, packer, packer.convert, packer.packed_reader, packer.cli, packer.format\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "import packer.torch\n"
        "assert 'torch' in sys.modules and packer.torch.PackedDataset\n"
        "print('ok')"
    )
    res = run_python(["-c", code], timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_reading_items_does_not_import_pandas(packed):
    # pyarrow's Array.to_numpy imports pandas (0.29 s and 26 MiB on the first open in a process): the reader takes
    # numpy views of the Arrow buffers instead
    code = (
        "import sys\n"
        "from packer.torch import PackedDataset, collate_packed\n"
        f"ds = PackedDataset({str(packed)!r})\n"
        "collate_packed([ds[0], ds[len(ds) - 1]])\n"
        "assert 'pandas' not in sys.modules\n"
        "print('ok')"
    )
    res = run_python(["-c", code], timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def _slow_segments(ids, cu):
    return [ids[a:b] for a, b in zip(cu[:-1], cu[1:])]


def test_items_reproduce_every_sequence_once(packed, lengths):
    ds = PackedDataset(packed, pad_id=0)
    want = expected_sequences(lengths)
    assert ds.capacity == CAP and len(ds) == ds.manifest["stats"]["packs"]
    assert ds.reader.n_shards > 2
    seen = {}
    for i in range(len(ds)):
        item = ds[i]
        ids, labels, pos = (item[k].numpy() for k in ("input_ids", "labels", "position_ids"))
        cu = item["cu_seqlens"].numpy()
        assert item["input_ids"].dtype == item["labels"].dtype == item["position_ids"].dtype == torch.int64
        assert item["cu_seqlens"].dtype == torch.int32 and ids.shape == labels.shape == pos.shape == (CAP,)
        n = item["num_tokens"]
        assert item["index"] == i and cu[0] == 0 and (np.diff(cu) > 0).all() and cu[-1] == CAP
        real_cu = cu[: int(np.searchsorted(cu, n)) + 1]
        assert real_cu[-1] == n
        longest = int(np.diff(real_cu).max())
        assert item["max_seqlen"] == longest == int(np.diff(cu).max())
        # padding: pad id, no labels, segments of at most the longest sequence's length, each numbered from 0, so
        # no padding position exceeds a real one
        assert (ids[n:] == 0).all() and (labels[n:] == IGNORE).all()
        assert (pos[n:] == np.arange(CAP - n) % longest).all()
        assert cu[len(real_cu) :].tolist() == [min(e, CAP) for e in range(n + longest, CAP + longest, longest)]
        n_labels = 0
        for a, b in zip(real_cu[:-1], real_cu[1:]):
            tok = int(ids[a])
            want_ids, want_labels = want[tok]
            assert tok not in seen, f"sequence {tok} in two places"
            seen[tok] = i
            assert (ids[a:b] == want_ids).all()
            assert labels[a] == IGNORE and (labels[a + 1 : b] == want_labels[1:]).all()
            assert (pos[a:b] == np.arange(b - a)).all()
            # the loss of a sequence alone: logits at t scored against labels at t + 1
            n_labels += int((want_labels[1:] != IGNORE).sum())
        assert item["num_label_tokens"] == n_labels
    dropped = ds.manifest["stats"]["sequences_dropped"]
    assert len(seen) + dropped == len(lengths)


def test_int32_items(packed):
    wide, narrow = PackedDataset(packed), PackedDataset(packed, dtype=torch.int32)
    for i in (0, len(wide) - 1):
        a, b = wide[i], narrow[i]
        for k in ("input_ids", "labels", "position_ids"):
            assert b[k].dtype == torch.int32 and torch.equal(a[k], b[k].long())
    with pytest.raises(PackerError, match="dtype"):
        PackedDataset(packed, dtype=torch.float32)


def test_unpadded_items(packed):
    padded, bare = PackedDataset(packed), PackedDataset(packed, pad=False, pad_id=7)
    for i in range(len(bare)):
        a, b = padded[i], bare[i]
        n = b["num_tokens"]
        assert b["input_ids"].shape == (n,) and int(b["cu_seqlens"][-1]) == n
        for k in ("input_ids", "labels", "position_ids"):
            assert torch.equal(a[k][:n], b[k])
        assert b["num_label_tokens"] == a["num_label_tokens"]
    item = PackedDataset(packed, pad_id=7)[len(bare) - 1]
    assert (item["input_ids"][item["num_tokens"] :] == 7).all()


def test_reader_matches_pyarrow(packed):
    reader = PackedReader(packed)
    rows = []
    for path in reader.shard_paths:
        rows += pa.ipc.open_stream(pa.memory_map(str(path))).read_all().to_pylist()
    assert len(rows) == len(reader)
    for i, row in enumerate(rows):
        ids, labels, cu = reader.pack(i)
        assert ids.tolist() == row["input_ids"] and labels.tolist() == row["labels"] and cu.tolist() == row["cu_seqlens"]
        assert not ids.flags.writeable  # a view into the memory map, not a copy
    costs = reader.attention_costs()
    assert costs.tolist() == [sum((b - a) ** 2 for a, b in zip(r["cu_seqlens"], r["cu_seqlens"][1:])) for r in rows]
    assert reader.num_tokens().tolist() == [len(r["input_ids"]) for r in rows]
    assert reader.num_sequences().tolist() == [len(r["cu_seqlens"]) - 1 for r in rows]
    assert reader.longest_sequences().tolist() == [max(np.diff(r["cu_seqlens"])) for r in rows]
    with pytest.raises(IndexError):
        reader.pack(len(reader))


def _fill_reference(ids, labels, cu, cap, pad_id):
    out = np.empty((3, cap), dtype=np.int64)
    n = len(ids)
    out[0] = list(ids) + [pad_id] * (cap - n)
    out[1] = list(labels) + [IGNORE] * (cap - n)
    pos, cu_out = [], list(cu)
    for a, b in zip(cu[:-1], cu[1:]):
        pos += list(range(b - a))
    longest = max(b - a for a, b in zip(cu[:-1], cu[1:]))
    while len(pos) < cap:  # the padding: segments of the longest sequence's length, the last one shorter
        chunk = min(longest, cap - len(pos))
        pos += list(range(chunk))
        cu_out.append(len(pos))
    out[2] = pos
    return out, sum(1 for x in labels if x != IGNORE), cu_out


@pytest.mark.parametrize("seed", range(20))
def test_fill_kernel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(1, 200))
    n = int(rng.integers(1, cap + 1))
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(int(rng.integers(0, 6)), n - 1), replace=False))
    cu = np.concatenate([[0], cuts, [n]]).astype(np.int32)
    ids = rng.integers(0, 2**31 - 1, n, dtype=np.int64).astype(np.int32)
    labels = np.where(rng.random(n) < 0.3, IGNORE, ids).astype(np.int32)
    if seed % 3 == 0:
        labels[cu[int(rng.integers(0, len(cu) - 1))]] = 1  # a trained label at a sequence start: reported
    out = np.full((3, cap), -7, dtype=np.int64 if seed % 2 else np.int32)
    want, want_count, want_cu = _fill_reference(ids, labels, cu, cap, 5)
    cu_out = np.full(len(want_cu), -7, dtype=np.int32)
    count, longest, bad = kernels.fill_padded_pack(ids, labels, cu, out[0], out[1], out[2], cu_out, 5, IGNORE)
    assert (out == want).all() and count == want_count
    assert cu_out.tolist() == want_cu and longest == max(np.diff(want_cu)) == max(np.diff(cu))
    starts = [s for s, a in enumerate(cu[:-1]) if labels[a] != IGNORE]
    assert bad == (starts[0] if starts else -1)


def test_pickles_small_and_works_in_workers(packed):
    ds = PackedDataset(packed)
    ds[0]  # maps a shard in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 16_000  # manifest and offsets only, no memory map or token data
    clone = pickle.loads(blob)
    assert clone.reader._shards == [None] * clone.reader.n_shards
    assert torch.equal(clone[5]["input_ids"], ds[5]["input_ids"])
    # two simulated ranks with torch's DistributedSampler and two workers each: every pack exactly once
    n = len(ds)
    got = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1, drop_last=True)
        # rank 1's worker is spawned: it gets the dataset pickled and maps the shards itself
        loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=1 if rank else 2,
                            collate_fn=PackedCollator(), multiprocessing_context="spawn" if rank else None)
        for batch in loader:
            got += batch["index"].tolist()
            b, length = batch["input_ids"].shape
            assert length == CAP and batch["cu_seqlens"][-1] == b * CAP
    assert len(got) == len(set(got)) == n - n % 2


def _copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_not_a_packed_folder(tmp_path, packed):
    with pytest.raises(PackerError, match="no such folder"):
        PackedDataset(tmp_path / "nope")
    with pytest.raises(PackerError, match=r"not a packed folder.*packer\.json"):
        PackedDataset(tmp_path)


def test_other_format_version(tmp_path, packed):
    folder = _copy_folder(packed, tmp_path / "v")
    path = folder / fmt.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest[fmt.MANIFEST_VERSION] = fmt.FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    # the version is checked before the manifest checksum (another version may define it differently) ...
    with pytest.raises(PackerError, match=r"packer\.json.*format version"):
        PackedDataset(folder)
    # ... and a sealed manifest of another version is refused for its version too
    rewrite_manifest(folder, lambda m: None)
    with pytest.raises(PackerError, match=r"packer\.json.*format version"):
        PackedDataset(folder)


@pytest.mark.parametrize("edit", ["capacity", "stat", "fingerprint", "shard rows"])
def test_edited_manifest(tmp_path, packed, edit):
    """An edit the other checks cannot see (PackedDataset would pad to capacity + 1) is refused on open."""
    folder = _copy_folder(packed, tmp_path / "e")

    def mutate(m):
        if edit == "capacity":
            m[fmt.MANIFEST_CONFIG][fmt.CONFIG_CAPACITY] += 1
        elif edit == "stat":
            m[fmt.MANIFEST_STATS]["tokens_in"] += 1
        elif edit == "fingerprint":
            m[fmt.MANIFEST_INPUT]["fingerprint"] = "0" * 64
        else:  # a row moved between two shards: the totals still add up
            m[fmt.MANIFEST_SHARDS][0][fmt.SHARD_ROWS] -= 1
            m[fmt.MANIFEST_SHARDS][1][fmt.SHARD_ROWS] += 1

    rewrite_manifest(folder, mutate, seal=False)
    for open_folder in (PackedDataset, PackedReader, lambda f: PackedDataset(f, verify=True)):
        with pytest.raises(PackerError, match=r"packer\.json: the manifest was modified or damaged after packing.*"
                           r"re-run 'packer pack'.*--reseal"):
            open_folder(folder)
    if edit == "capacity":  # sealed on purpose, with the stats that depend on it: opens, pads to the new capacity
        rewrite_manifest(folder, lambda m: None)
        with pytest.raises(PackerError, match=r"stats\.capacity is 96 but config\.capacity is 97"):
            PackedDataset(folder)

        def restate(m):
            stats = m[fmt.MANIFEST_STATS]
            stats["capacity"] = CAP + 1
            stats["padding_tokens"] = stats["packs"] * (CAP + 1) - stats["tokens_out"]

        rewrite_manifest(folder, restate)
        assert PackedDataset(folder).capacity == CAP + 1


def test_missing_shard(tmp_path, packed):
    folder = _copy_folder(packed, tmp_path / "m")
    victim = sorted(folder.glob("data-*.arrow"))[1]
    victim.unlink()
    with pytest.raises(PackerError, match=f"{victim.name}.*missing"):
        PackedDataset(folder)


def test_truncated_shard(tmp_path, packed):
    folder = _copy_folder(packed, tmp_path / "t")
    victim = sorted(folder.glob("data-*.arrow"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackerError, match=f"{victim.name}.*bytes on disk"):
        PackedDataset(folder)
    # even when the manifest was edited (and re-sealed) to the new size, the stream itself is found truncated
    rewrite_manifest(folder, lambda m: m[fmt.MANIFEST_SHARDS][2].update({fmt.SHARD_BYTES: len(data) // 2}))
    with pytest.raises(PackerError, match=f"{victim.name}.*(truncated|damaged)"):
        PackedDataset(folder)
    # without re-sealing, the manifest checksum refuses the edit first
    rewrite_manifest(folder, lambda m: m[fmt.MANIFEST_SHARDS][2].update({fmt.SHARD_BYTES: len(data) // 3}), seal=False)
    with pytest.raises(PackerError, match=r"packer\.json: the manifest was modified or damaged"):
        PackedDataset(folder)


def test_checksum_mismatch_only_with_verify(tmp_path, packed):
    folder = _copy_folder(packed, tmp_path / "c")
    victim = sorted(folder.glob("data-*.arrow"))[0]
    reader = PackedReader(folder)
    ids, _, _ = reader.pack(0)
    # flip one token of pack 0 in place: same size, valid Arrow, other bytes
    raw = bytearray(victim.read_bytes())
    token = ids[:1].tobytes()
    at = raw.find(token * 4)
    assert at > 0
    raw[at] ^= 0xFF
    del reader, ids
    victim.write_bytes(bytes(raw))
    PackedDataset(folder)  # no verification by default: opening stays cheap
    with pytest.raises(PackerError, match=f"{victim.name}.*checksum"):
        PackedDataset(folder, verify=True)
    PackedDataset(packed, verify=True)  # the intact folder passes


def test_bad_arguments(packed):
    with pytest.raises(PackerError, match="pad_id"):
        PackedDataset(packed, pad_id=-1)
    with pytest.raises(PackerError, match="keys"):
        PackedCollator(keys="nope")


def test_negative_indices_file_paths_and_repr(packed):
    ds = PackedDataset(packed)
    n = len(ds)
    assert ds[-1]["index"] == n - 1 and torch.equal(ds[-1]["input_ids"], ds[n - 1]["input_ids"])
    assert [it["index"] for it in ds.__getitems__([-2, 0])] == [n - 2, 0]
    for bad in (n, -n - 1, -100 * n):
        with pytest.raises(IndexError, match=f"pack index {bad} out of range for {n} packs"):
            ds[bad]
    shard = PackedReader(packed).shard_paths[0]
    with pytest.raises(PackerError, match=f"is a file.*PackedDataset\\('{packed}'\\)"):
        PackedDataset(shard)
    assert repr(ds) == f"PackedDataset('{packed}', packs={n}, capacity={CAP}, pad=True, pad_id=0, dtype=torch.int64)"


def test_row_losses_sum_split_chunks_back_to_their_rows(tmp_path):
    """``--overflow split`` cuts rows longer than the capacity into chunks in several packs; the per-row losses of
    the whole folder equal each input row's loss run alone (its chunks' token losses added up)."""
    from packer.convert import PackConfig, pack_dataset
    from packer.input import Columns
    from packer.torch import row_losses, token_losses
    from tests._torch_helpers import write_input

    lengths = [5, 70, 9, 33, 120, 4, 17]
    src = write_input(tmp_path / "in.arrow", lengths)
    config = PackConfig(capacity=48, overflow="split", columns=Columns(labels="labels"))
    pack_dataset(src, tmp_path / "packed", config=config, progress=False)
    ds = PackedDataset(tmp_path / "packed", sequence_ids=True)
    assert ds[0]["seq_index"].shape[0] == ds[0]["cu_seqlens"].shape[0] - 1
    vocab = len(lengths) + 1
    torch.manual_seed(0)
    table = torch.randn(vocab, vocab)  # a fixed "model": logits depend on the token only
    sums, counts = {}, {}
    for batch in DataLoader(ds, batch_size=2, collate_fn=PackedCollator()):
        per_token = token_losses(table[batch["input_ids"]], batch["labels"])
        rows, loss, tokens = row_losses(per_token, batch)
        for r, l, t in zip(rows.tolist(), loss.tolist(), tokens.tolist()):
            sums[r] = sums.get(r, 0.0) + l
            counts[r] = counts.get(r, 0) + t
    want = expected_sequences(lengths)
    assert sorted(sums) == list(range(len(lengths)))
    for row, n in enumerate(lengths):
        ids, labels = (torch.as_tensor(x) for x in want[row + 1])
        # the row alone; a split row's later chunks start with -100 too (packer masks every chunk's first token)
        alone = torch.nn.functional.cross_entropy(table[ids[:-1]], labels[1:].long(), ignore_index=IGNORE,
                                                  reduction="none")
        chunk_starts = set(range(48, n, 48)) if n > 48 else set()
        keep = torch.tensor([t + 1 not in chunk_starts for t in range(n - 1)])
        assert counts[row] == int(((labels[1:] != IGNORE) & keep).sum())
        assert sums[row] == pytest.approx(float(alone[keep].sum()), rel=1e-5)
    with pytest.raises(PackerError, match="sequence_ids=True"):
        row_losses(per_token, PackedCollator()([PackedDataset(tmp_path / "packed")[0]]))


def _replace_shard(folder, table):
    """Write ``table`` as shard 0 and fix its manifest entry (size, checksum) so only deeper checks see it."""
    import xxhash

    name = fmt.read_manifest(folder)[fmt.MANIFEST_SHARDS][0][fmt.SHARD_FILE]
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    data = (folder / name).read_bytes()
    rewrite_manifest(folder, lambda m: m[fmt.MANIFEST_SHARDS][0].update(
        bytes=len(data), xxh3_128=xxhash.xxh3_128(data).hexdigest()))


def test_seq_lengths_column_and_folders_without_it(tmp_path, packed):
    """``seq_lengths`` (what TRL's padding-free collator reads) is ``diff(cu_seqlens)``; ``packer verify`` checks
    it, and a folder written before the column existed still reads and verifies."""
    import shutil

    from packer.verify import verify_packed

    reader = PackedReader(packed)
    table = reader._shard(0).table
    assert table.schema.field(fmt.SEQ_LENGTHS).type == pa.list_(pa.int32())
    for cu, sl in zip(table.column(fmt.CU_SEQLENS).to_pylist(), table.column(fmt.SEQ_LENGTHS).to_pylist()):
        assert sl == np.diff(cu).tolist()
    legacy = tmp_path / "legacy"
    shutil.copytree(packed, legacy)
    _replace_shard(legacy, table.drop_columns([fmt.SEQ_LENGTHS]))
    assert verify_packed(legacy).failed() == []
    assert torch.equal(PackedDataset(legacy)[0]["input_ids"], PackedDataset(packed)[0]["input_ids"])
    damaged = tmp_path / "damaged"
    shutil.copytree(packed, damaged)
    rows = table.to_pylist()
    rows[1][fmt.SEQ_LENGTHS][0] += 1
    _replace_shard(damaged, pa.Table.from_pylist(rows, schema=fmt.SCHEMA))
    report = verify_packed(damaged)
    assert report.failed() == ["cu_seqlens"] and fmt.SEQ_LENGTHS in report.defects[0].message
    assert report.defects[0].pack == 1  # the pack whose lengths were edited, not the first one
