"""The converter end to end in Python: every invariant of the packed folder, on every input format."""
import json
import logging

import datasets
import numpy as np
import pyarrow as pa
import pytest
import xxhash

from packer import PackerError
from packer import format as fmt
from packer.convert import PackConfig, pack_dataset
from packer.input import Columns
from tests._invariants import check_packed, read_packed
from tests.conftest import readable_table, write_arrow_file, write_arrow_stream, write_parquet


def rows_of(table, column):
    return [np.asarray(x.values) for x in table.column(column).combine_chunks()]


@pytest.mark.parametrize("overflow", ["drop", "truncate", "split"])
@pytest.mark.parametrize("strategy", ["bfd", "ffd", "mixed", "shuffle"])
def test_invariants_every_policy_and_strategy(tmp_path, lengths, overflow, strategy):
    table = readable_table(lengths)
    src = write_arrow_file(tmp_path / "in.arrow", table, batch_rows=37)
    out = tmp_path / "out"
    config = PackConfig(capacity=100, overflow=overflow, strategy=strategy, shard_size=7)
    manifest = pack_dataset(src, out, config=config, progress=False)
    check_packed(out, rows_of(table, "input_ids"), None, capacity=100, overflow=overflow)
    assert manifest[fmt.MANIFEST_CONFIG]["strategy"] == strategy
    assert len(manifest[fmt.MANIFEST_SHARDS]) == -(-manifest["stats"]["packs"] // 7)


@pytest.mark.parametrize("writer", [write_arrow_file, write_arrow_stream, write_parquet])
def test_formats_and_multiple_files_keep_global_row_order(tmp_path, writer, lengths):
    a, b = lengths[:120], lengths[120:]
    ta, tb = readable_table(a, labels=True), readable_table(b, first_row=len(a), labels=True)
    fa = writer(tmp_path / "a.bin", ta)
    fb = writer(tmp_path / "b.bin", tb)
    out = tmp_path / "out"
    pack_dataset([fa, fb], out, config=PackConfig(capacity=100, columns=Columns(labels="labels")), progress=False)
    ids = rows_of(ta, "input_ids") + rows_of(tb, "input_ids")
    labels = rows_of(ta, "labels") + rows_of(tb, "labels")
    check_packed(out, ids, labels, capacity=100, overflow="drop")


def test_loss_mask_column(tmp_path):
    table = readable_table([5, 8, 3])
    mask = pa.array([[0, 0, 1, 1, 1], [1] * 8, [0, 0, 0]], type=pa.list_(pa.uint8()))
    table = table.append_column("mask", mask)
    src = write_arrow_file(tmp_path / "in.arrow", table)
    pack_dataset(src, tmp_path / "out", config=PackConfig(capacity=10, columns=Columns(loss_mask="mask")),
                 progress=False)
    ids = rows_of(table, "input_ids")
    labels = [np.where(np.asarray(m.values) == 1, i, -100) for m, i in zip(mask, ids)]
    check_packed(tmp_path / "out", ids, labels, capacity=10, overflow="drop")


def test_save_to_disk_folder_round_trips_through_load_from_disk(tmp_path, samples_dir):
    out = tmp_path / "packed"
    manifest = pack_dataset(samples_dir, out, config=PackConfig(columns=Columns(labels="labels")), progress=False)
    src = datasets.load_from_disk(str(samples_dir))
    ids = [np.asarray(x, dtype=np.int64) for x in src["input_ids"]]
    labels = [np.asarray(x, dtype=np.int64) for x in src["labels"]]
    check_packed(out, ids, labels, capacity=20_000, overflow="drop")
    packed = datasets.load_from_disk(str(out))
    assert packed.num_rows == manifest["stats"]["packs"]
    assert set(packed.column_names) == set(fmt.COLUMNS)
    first = packed[0]
    assert first["cu_seqlens"][-1] == len(first["input_ids"])
    _, table = read_packed(out)
    assert first["input_ids"] == table.column("input_ids")[0].as_py()


def test_manifest_contents(tmp_path, samples_dir):
    out = tmp_path / "packed"
    config = PackConfig(strategy="mixed", seed=5, overflow="split", shard_size=3, columns=Columns(labels="labels"))
    pack_dataset(samples_dir, out, config=config, progress=False)
    m = json.loads((out / fmt.MANIFEST_FILE).read_text())
    assert m["format"] == fmt.FORMAT_NAME and m["format_version"] == fmt.FORMAT_VERSION
    assert m["config"] == config.to_json()
    assert m["input"]["rows"] == 502 and len(m["input"]["fingerprint"]) == 64
    shards = m["shards"]
    assert sum(s["rows"] for s in shards) == m["stats"]["packs"]
    assert sum(s["tokens"] for s in shards) == m["stats"]["tokens_out"] == m["stats"]["tokens_in"]
    for s in shards:
        data = (out / s["file"]).read_bytes()

        assert xxhash.xxh3_128(data).hexdigest() == s["xxh3_128"] and len(data) == s["bytes"]
    stats = m["stats"]
    assert stats["packs"] >= stats["lower_bound_packs"]
    assert stats["packing_efficiency"] == pytest.approx(stats["tokens_out"] / (stats["packs"] * 20_000))
    assert stats["sequences_split"] == 3 and stats["data_loss_tokens"] == 0
    assert set(m["run"]["seconds"]) >= {"open", "plan", "write", "total"}


def test_same_input_same_bytes(tmp_path, samples_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        pack_dataset(samples_dir, out, config=PackConfig(strategy="shuffle", seed=3), progress=False)
    ma, mb = (json.loads((o / fmt.MANIFEST_FILE).read_text()) for o in (a, b))
    ma.pop("run"), mb.pop("run")
    assert ma == mb
    for s in ma["shards"]:
        assert (a / s["file"]).read_bytes() == (b / s["file"]).read_bytes()


def test_overwrite(tmp_path, samples_dir):
    out = tmp_path / "packed"
    first = pack_dataset(samples_dir, out, progress=False)
    with pytest.raises(PackerError, match="already exists; pass --overwrite"):
        pack_dataset(samples_dir, out, config=PackConfig(capacity=8_000), progress=False)
    # the same command again (e.g. after a crash once the output was in place) finds it done and rewrites nothing
    mtime = (out / fmt.MANIFEST_FILE).stat().st_mtime_ns
    assert pack_dataset(samples_dir, out, progress=False)[fmt.MANIFEST_SHARDS] == first[fmt.MANIFEST_SHARDS]
    assert (out / fmt.MANIFEST_FILE).stat().st_mtime_ns == mtime
    pack_dataset(samples_dir, out, config=PackConfig(capacity=8_000, overflow="split"), overwrite=True,
                 progress=False)
    assert fmt.read_manifest(out)["config"]["capacity"] == 8_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(fmt.TMP_DIR_PREFIX)]


def test_empty_sequences_are_skipped_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="packer")
    table = readable_table([3, 0, 4, 0])
    src = write_arrow_file(tmp_path / "in.arrow", table)
    m = pack_dataset(src, tmp_path / "out", config=PackConfig(capacity=10), progress=False)
    assert m["stats"]["empty_sequences_skipped"] == 2
    assert "skipped 2 empty sequences" in caplog.text
    check_packed(tmp_path / "out", rows_of(table, "input_ids"), None, capacity=10, overflow="drop")


def test_wide_and_narrow_integer_types(tmp_path):
    for typ in (pa.int64(), pa.uint16(), pa.int8(), pa.uint32()):
        table = readable_table([3, 5, 2], id_type=typ)
        src = write_parquet(tmp_path / f"in-{typ}.parquet", table)
        out = tmp_path / f"out-{typ}"
        pack_dataset(src, out, config=PackConfig(capacity=6), progress=False)
        check_packed(out, rows_of(table, "input_ids"), None, capacity=6, overflow="drop")


def test_sliced_and_large_list_input(tmp_path):
    table = readable_table([4, 6, 2, 7])
    large = pa.table({"input_ids": table.column("input_ids").cast(pa.large_list(pa.int32()))})
    src = write_arrow_stream(tmp_path / "in.arrow", large, batch_rows=3)
    pack_dataset(src, tmp_path / "out", config=PackConfig(capacity=10), progress=False)
    check_packed(tmp_path / "out", rows_of(table, "input_ids"), None, capacity=10, overflow="drop")
