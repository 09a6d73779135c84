"""Inputs mean one thing (issue 11): the same columns, splits and tokens whatever the entry point (Python or CLI),
the file order or the folder layout; what packer cannot read as meant is refused with the fix, what it loses is said.

Row i of every fixture is ``[i] * n_i`` (``readable_table``), so a row in the wrong place shows in the tokens.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packer import PackerError
from packer import format as fmt
from packer.cli import main
from packer.convert import PackConfig, pack_dataset
from packer.errors import ConfigError
from packer.input import DETECT, Columns, scan_inputs
from tests._invariants import check_packed, read_packed
from tests.conftest import readable_table, write_arrow_file, write_arrow_stream, write_parquet


def rows(table, column):
    return [np.asarray(x.values) for x in table.column(column).combine_chunks()]


def expected_label_tokens(labels: list[np.ndarray]) -> int:
    """Tokens trained on once every sequence's first label is masked (an independent count)."""
    return sum(int(np.count_nonzero(x[1:] != fmt.IGNORE_INDEX)) for x in labels)


def refused(capsys, argv, *fragments) -> str:
    capsys.readouterr()  # drop what the fixtures printed (datasets' progress bars)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("packer: error:") and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def shard_bytes(folder) -> list[bytes]:
    m = fmt.read_manifest(folder)
    return [(folder / s["file"]).read_bytes() for s in m[fmt.MANIFEST_SHARDS]]


# ------------------------------------------------------------------------------------- 1, 2: one decision on columns


def test_python_default_uses_the_labels_column_as_the_cli_does(tmp_path):
    """Finding 1: PackConfig() trained every token of input with labels; the CLI used the labels."""
    table = readable_table([5, 9, 4, 12, 7], labels=True)
    src = write_arrow_file(tmp_path / "in.arrow", table)
    m = pack_dataset(src, tmp_path / "py", config=PackConfig(capacity=16), progress=False)
    assert m["config"]["columns"] == {"input_ids": "input_ids", "labels": "labels", "loss_mask": None}
    assert m["stats"]["label_tokens"] == expected_label_tokens(rows(table, "labels"))
    check_packed(tmp_path / "py", rows(table, "input_ids"), rows(table, "labels"), capacity=16, overflow="drop")
    assert main(["-q", "pack", str(src), "-o", str(tmp_path / "cli"), "--max-length", "16"]) == 0
    assert shard_bytes(tmp_path / "py") == shard_bytes(tmp_path / "cli")
    assert fmt.read_manifest(tmp_path / "cli")["config"] == m["config"]
    # a loss_mask column is detected the same way; labels=None (--no-labels) trains on every token
    mask = pa.array([[0, 1, 1], [1, 1]], type=pa.list_(pa.int8()))
    src2 = write_arrow_file(tmp_path / "mask.arrow", readable_table([3, 2]).append_column("loss_mask", mask))
    m2 = pack_dataset(src2, tmp_path / "m", config=PackConfig(capacity=8), progress=False)
    assert m2["config"]["columns"]["loss_mask"] == "loss_mask" and m2["stats"]["label_tokens"] == 2 + 1
    m3 = pack_dataset(src, tmp_path / "all", config=PackConfig(capacity=16, columns=Columns(labels=None)),
                      progress=False)
    assert m3["config"]["columns"]["labels"] is None and m3["stats"]["label_tokens"] == sum([5, 9, 4, 12, 7]) - 5


@pytest.mark.parametrize("order", ["labels-second", "labels-first"])
def test_files_that_disagree_on_a_column_are_refused_in_any_order(tmp_path, capsys, order):
    """Finding 2: the decision was taken from the first file alone (exit 0 one way round, refused the other)."""
    a = write_parquet(tmp_path / "a.parquet", readable_table([4, 6]))
    b = write_parquet(tmp_path / "b.parquet", readable_table([5, 3], first_row=2, labels=True))
    files = [a, b] if order == "labels-second" else [b, a]
    out = tmp_path / "out"
    refused(capsys, ["pack", *map(str, files), "-o", str(out)], "'labels' is in 1 of 2 input files", "b.parquet",
            "a.parquet", "--no-labels")
    with pytest.raises(PackerError, match="'labels' is in 1 of 2 input files"):
        pack_dataset(files, out, config=PackConfig(capacity=16), progress=False)
    assert not out.exists()
    # the user says what to do: --no-labels packs every token of both; --labels-column names the file without it
    assert main(["-q", "pack", *map(str, files), "-o", str(out), "--no-labels", "--max-length", "16"]) == 0
    refused(capsys, ["pack", *map(str, files), "-o", str(tmp_path / "o2"), "--labels-column", "labels"],
            "a.parquet: no column 'labels'")


def test_a_column_of_two_types_is_refused(tmp_path, capsys):
    t = readable_table([3, 2])
    a = write_arrow_file(tmp_path / "a.arrow", t.append_column("m", pa.array([[0, 1, 1], [1, 1]], pa.list_(pa.int8()))))
    b = write_arrow_file(tmp_path / "b.arrow", t.append_column("m", pa.array([[False, True, True], [True, True]])))
    refused(capsys, ["pack", str(a), str(b), "-o", str(tmp_path / "out"), "--loss-mask-column", "m"],
            "column 'm' holds integers in", "a.arrow", "booleans in", "b.arrow")


# ------------------------------------------------------------------------------------------------- 3: discovery


def _dataset_dict(folder, splits: dict[str, list[int]]):
    import datasets

    first = 0
    dd = {}
    for name, lengths in splits.items():
        dd[name] = datasets.Dataset(readable_table(lengths, first_row=first))
        first += len(lengths)
    datasets.DatasetDict(dd).save_to_disk(str(folder))


def test_a_datasetdict_below_the_folder_is_refused_and_split_picks_one(tmp_path, capsys):
    """Finding 3: data/mydata/{train,test} was packed whole, test rows mixed into training."""
    _dataset_dict(tmp_path / "data" / "mydata", {"train": [3, 4, 5], "test": [6, 7]})
    data = tmp_path / "data"
    refused(capsys, ["pack", str(data), "-o", str(tmp_path / "out")], "holds 2 datasets", "mydata/test",
            "mydata/train", "--split")
    with pytest.raises(PackerError, match="holds 2 datasets"):
        pack_dataset(data, tmp_path / "out", progress=False)
    assert main(["-q", "pack", str(data), "--split", "train", "-o", str(tmp_path / "train"), "--max-length", "8"]) == 0
    check_packed(tmp_path / "train", [np.full(n, i) for i, n in enumerate([3, 4, 5])], None, capacity=8,
                 overflow="drop")
    m = pack_dataset(data / "mydata", tmp_path / "test", config=PackConfig(capacity=8), split="test", progress=False)
    assert m["input"]["rows"] == 2
    check_packed(tmp_path / "test", [np.full(6, 3), np.full(7, 4)], None, capacity=8, overflow="drop")
    refused(capsys, ["pack", str(data), "--split", "dev", "-o", str(tmp_path / "o")], "no split 'dev'",
            "mydata/train")
    # through a filesystem URI, the same datasets and the same choice
    with pytest.raises(PackerError, match="holds 2 datasets"):
        pack_dataset(f"file://{data}", tmp_path / "u", progress=False)
    m = pack_dataset(f"file://{data}", tmp_path / "u", config=PackConfig(capacity=8), split="test", progress=False)
    assert shard_bytes(tmp_path / "u") == shard_bytes(tmp_path / "test")


def test_sibling_datasets_and_split_named_files_are_refused(tmp_path, capsys):
    import datasets

    for name, first in (("wiki", 0), ("code", 10)):
        datasets.Dataset(readable_table([3, 4], first_row=first)).save_to_disk(str(tmp_path / "two" / name))
    refused(capsys, ["pack", str(tmp_path / "two"), "-o", str(tmp_path / "out")], "holds 2 datasets", "code",
            "wiki")
    # the Hugging Face hub layout: the split is in the file name
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    write_parquet(hub / "train-00000-of-00001.parquet", readable_table([3, 4]))
    write_parquet(hub / "test-00000-of-00001.parquet", readable_table([5], first_row=2))
    refused(capsys, ["pack", str(tmp_path / "hub"), "-o", str(tmp_path / "out")], "holds 2 datasets", "test, train")
    assert main(["-q", "pack", str(tmp_path / "hub"), "--split", "test", "-o", str(tmp_path / "t")]) == 0
    assert fmt.read_manifest(tmp_path / "t")["input"]["rows"] == 1
    # shards of one dataset in plain subfolders stay one dataset
    for i, sub in enumerate(["a", "b"]):
        (tmp_path / "plain" / sub).mkdir(parents=True)
        write_parquet(tmp_path / "plain" / sub / "part.parquet", readable_table([2, 3], first_row=2 * i))
    assert main(["pack", str(tmp_path / "plain"), "-o", str(tmp_path / "p"), "--max-length", "8"]) == 0
    assert "packing the files of 2 folders as one dataset (a, b)" in capsys.readouterr().err
    check_packed(tmp_path / "p", [np.full(n, i) for i, n in enumerate([2, 3, 2, 3])], None, capacity=8,
                 overflow="drop")


# ----------------------------------------------------------------------------------------------- 4: packed input


def sequences(folder) -> dict:
    """{(seq_index, seq_offset): (tokens, labels)} of every sequence of a packed folder, and its pack lengths."""
    _, t = read_packed(folder)
    out = {}
    for r in range(t.num_rows):
        ids, lab, cu, si, so = (np.asarray(t.column(c)[r].values)
                                for c in (fmt.INPUT_IDS, fmt.LABELS, fmt.CU_SEQLENS, fmt.SEQ_INDEX, fmt.SEQ_OFFSET))
        for k in range(len(si)):
            key = (int(si[k]), int(so[k]))
            assert key not in out
            out[key] = (ids[cu[k]:cu[k + 1]].tolist(), lab[cu[k]:cu[k + 1]].tolist())
    return out


@pytest.mark.parametrize("overflow", ["drop", "split"])
def test_a_packed_folder_is_repacked_from_its_sequences(tmp_path, capsys, overflow):
    """Finding 4: each pack of a packed folder became one sequence, its boundaries gone. Now its sequences are
    packed again: boundaries, labels and provenance back to the original rows kept, at the new capacity."""
    lengths = [3, 9, 4, 12, 7, 1, 6, 30, 5, 8, 2, 11]
    table = readable_table(lengths, labels=True)
    src = write_arrow_file(tmp_path / "in.arrow", table, batch_rows=5)
    assert main(["-q", "pack", str(src), "-o", str(tmp_path / "packed"), "--max-length", "24",
                 "--shard-size", "2"]) == 0  # row 7 (30 tokens) is dropped
    config = PackConfig(capacity=10, overflow=overflow, strategy="shuffle", seed=2, shard_size=3)
    m = pack_dataset(tmp_path / "packed", tmp_path / "again", config=config, progress=False)
    # the same sequences as packing the original input directly with the new options, minus the row dropped first
    direct = pack_dataset(src, tmp_path / "direct", config=config, progress=False)
    want = {k: v for k, v in sequences(tmp_path / "direct").items() if k[0] != 7}
    got = sequences(tmp_path / "again")
    assert got == want
    assert m["config"]["columns"]["labels"] == "labels"
    assert m["input"]["rows"] == len(lengths) and m["input"]["sequences"] == len(lengths) - 1
    assert m["input"]["repacked_from"]["input"] == fmt.read_manifest(tmp_path / "packed")["input"]
    assert m["stats"]["label_tokens"] == direct["stats"]["label_tokens"] - expected_label_tokens(
        [rows(table, "labels")[7][i:i + 10] for i in range(0, 30, 10)] if overflow == "split" else [])
    from packer.verify import verify_packed

    assert verify_packed(tmp_path / "again").ok
    # the command line does the same, --verify included
    assert main(["-q", "pack", str(tmp_path / "packed"), "-o", str(tmp_path / "cli"), "--max-length", "10",
                 "--overflow", overflow, "--strategy", "shuffle", "--seed", "2", "--shard-size", "3",
                 "--verify"]) == 0
    assert shard_bytes(tmp_path / "cli") == shard_bytes(tmp_path / "again")


def test_packed_input_that_cannot_be_repacked_exactly_is_refused(tmp_path, capsys):
    src = write_arrow_file(tmp_path / "in.arrow", readable_table([3, 4, 5, 26]))
    assert main(["-q", "pack", str(src), "-o", str(tmp_path / "split"), "--max-length", "10", "--overflow",
                 "split"]) == 0
    refused(capsys, ["pack", str(tmp_path / "split"), "-o", str(tmp_path / "again")], "pieces of rows cut by",
            "Pack the original input")
    assert main(["-q", "pack", str(src), "-o", str(tmp_path / "packed"), "--max-length", "10"]) == 0
    shard = sorted((tmp_path / "packed").glob("data-*.arrow"))[0]
    refused(capsys, ["pack", str(shard), "-o", str(tmp_path / "again")], "is a packed folder", "or a shard of one")
    refused(capsys, ["pack", str(tmp_path / "packed"), str(src), "-o", str(tmp_path / "again")],
            "is a packed folder", "only input")
    refused(capsys, ["pack", str(tmp_path / "packed"), "-o", str(tmp_path / "again"), "--loss-mask-column", "m"],
            "repack it with its labels")
    assert not (tmp_path / "again").exists()
    # next to its input, a packed folder is skipped, as before
    assert main(["-q", "pack", str(tmp_path), "-o", str(tmp_path / "again"), "--max-length", "10"]) == 0
    assert fmt.read_manifest(tmp_path / "again")["input"]["rows"] == 4


# ---------------------------------------------------------------------------------------- 5, 6: padding and masks


def _padded(lengths, width, *, side):
    ids, masks = [], []
    for i, n in enumerate(lengths):
        pad = [0] * (width - n)
        ids.append(([i] * n + pad) if side == "right" else (pad + [i] * n))
        masks.append(([1] * n + pad) if side == "right" else (pad + [1] * n))
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "attention_mask": pa.array(masks, pa.list_(pa.int8()))})


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_input_is_refused_never_packed_as_tokens(tmp_path, capsys, side):
    """Finding 5: rows padded to 512 were packed pad tokens and all, and reported 98.7% efficient."""
    src = write_parquet(tmp_path / "pad.parquet", _padded([3, 8, 5], 8, side=side))
    out = tmp_path / "out"
    refused(capsys, ["pack", str(src), "-o", str(out)], "pad.parquet", "'attention_mask' is 0 at 8 of 24 tokens",
            f"{side}-padded", "padding=False")
    with pytest.raises(PackerError, match="the rows are padded"):
        pack_dataset(src, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".packer-tmp-*"))


def test_unpadded_attention_mask_is_fine_and_a_gapped_one_is_not_padding(tmp_path, capsys):
    t = readable_table([3, 2])
    ones = write_arrow_file(tmp_path / "ones.arrow",
                            t.append_column("attention_mask", pa.array([[1, 1, 1], [1, 1]], pa.list_(pa.int64()))))
    assert main(["-q", "pack", str(ones), "-o", str(tmp_path / "out"), "--max-length", "8"]) == 0
    gap = write_arrow_file(tmp_path / "gap.arrow",
                           t.append_column("attention_mask", pa.array([[1, 0, 1], [1, 1]], pa.list_(pa.int64()))))
    refused(capsys, ["pack", str(gap), "-o", str(tmp_path / "o2")], "row 0 is a mask with gaps")
    # a mask that is not one of these rows' masks: another length, or values other than 0 and 1
    short = write_arrow_file(tmp_path / "short.arrow",
                             t.append_column("attention_mask", pa.array([[1, 1, 1], [1]], pa.list_(pa.int64()))))
    refused(capsys, ["pack", str(short), "-o", str(tmp_path / "o3")], "row 1 has 1 entries for 2 input_ids")
    two = write_arrow_file(tmp_path / "two.arrow",
                           t.append_column("attention_mask", pa.array([[1, 2, 1], [1, 1]], pa.list_(pa.int64()))))
    refused(capsys, ["pack", str(two), "-o", str(tmp_path / "o4")], "row 0 holds 2; an attention mask holds 0")
    floats = write_arrow_file(tmp_path / "floats.arrow",
                              t.append_column("attention_mask", pa.array([[1., 1., 0.], [1., 1.]], pa.list_(pa.float32()))))
    refused(capsys, ["pack", str(floats), "-o", str(tmp_path / "o5")], "row 0 is right-padded")
    half = write_arrow_file(tmp_path / "half.arrow",
                            t.append_column("attention_mask", pa.array([[1., .5, 1.], [1., 1.]], pa.list_(pa.float64()))))
    refused(capsys, ["pack", str(half), "-o", str(tmp_path / "o6")], "row 0 holds 0.5")
    nulls = write_arrow_file(tmp_path / "nulls.arrow",
                             t.append_column("attention_mask", pa.array([[1, 1, 1], None], pa.list_(pa.int8()))))
    refused(capsys, ["pack", str(nulls), "-o", str(tmp_path / "o7")], "row 1 is null, so which tokens are padding")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o") and p.name != "ones.arrow" and p.is_dir()
                and p.name != "out"]  # refused: nothing written


def test_attention_mask_as_loss_mask_is_refused(tmp_path, capsys):
    """Finding 6: --loss-mask-column attention_mask trained every real token, with no hint."""
    t = readable_table([3, 2]).append_column("attention_mask", pa.array([[1, 1, 1], [1, 1]], pa.list_(pa.int8())))
    src = write_arrow_file(tmp_path / "in.arrow", t)
    refused(capsys, ["pack", str(src), "-o", str(tmp_path / "out"), "--loss-mask-column", "attention_mask"],
            "--loss-mask-column attention_mask: an attention mask marks padding")
    with pytest.raises(ConfigError, match=r"Columns\(loss_mask='attention_mask'\)") as e:
        Columns(loss_mask="attention_mask")
    assert e.value.param == "loss_mask"


# ------------------------------------------------------------------------------------------------ 7: no silent loss


def test_untrainable_sequences_are_counted_warned_and_max_loss_refuses(tmp_path, capsys, caplog):
    """Finding 7: truncation left sequences with no trained token, neither counted nor reported."""
    # rows 0..5: a prompt (label -100) of 6 tokens, then an answer of 2; rows 6, 7: 3 tokens, all trained
    lengths = [8] * 6 + [3, 3]
    ids = [np.full(n, i, np.int32) for i, n in enumerate(lengths)]
    labels = [np.where(np.arange(n) < 6, -100, i).astype(np.int32) if n == 8 else np.full(n, i, np.int32)
              for i, n in enumerate(lengths)]
    t = pa.table({"input_ids": pa.array([x.tolist() for x in ids], pa.list_(pa.int32())),
                  "labels": pa.array([x.tolist() for x in labels], pa.list_(pa.int32()))})
    src = write_arrow_file(tmp_path / "in.arrow", t)
    with caplog.at_level(logging.WARNING, logger="packer"):
        m = pack_dataset(src, tmp_path / "cut", config=PackConfig(capacity=6, overflow="truncate"), progress=False)
    s = m["stats"]
    # the cut keeps each prompt's first 6 tokens: all -100; rows 6 and 7 keep 2 trained tokens each
    assert s["sequences_untrainable"] == 6 and s["tokens_untrainable"] == 36
    assert s["label_tokens"] == expected_label_tokens([x[:6] for x in labels])
    assert s["loss_tokens"] == pytest.approx((12 + 36) / sum(lengths))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "6 packed sequences with no trained token" in warning and "6 sequences truncated" in warning
    assert "--overflow split" in warning and "--max-loss" in warning
    # --max-loss: an error, and nothing written
    refused(capsys, ["pack", str(src), "-o", str(tmp_path / "strict"), "--max-length", "6", "--overflow", "truncate",
                     "--max-loss", "0.5"], "more than --max-loss 0.5", "no trained token")
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".packer-tmp-*"))
    # the statistics table shows them
    assert main(["stats", str(tmp_path / "cut")]) == 0
    assert "6 sequences with no trained token" in capsys.readouterr().out


def test_default_drop_warns_with_the_numbers_and_max_loss_refuses_before_writing(tmp_path, caplog, monkeypatch):
    lengths = [3] * 20 + [40]  # one row over the capacity holds 40 of 100 tokens
    src = write_arrow_file(tmp_path / "in.arrow", readable_table(lengths))
    with caplog.at_level(logging.WARNING, logger="packer"):
        pack_dataset(src, tmp_path / "out", config=PackConfig(capacity=10), progress=False)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "loses 40.0% of the input's tokens (40 of 100)" in warning and "1 sequences longer than" in warning
    import packer.convert as convert

    monkeypatch.setattr(convert, "iter_jobs", lambda *a, **k: pytest.fail("wrote shards before refusing"))
    with pytest.raises(PackerError, match="more than --max-loss 0.1"):
        pack_dataset(src, tmp_path / "strict", config=PackConfig(capacity=10, max_loss=0.1), progress=False)
    assert not (tmp_path / "strict").exists()


# -------------------------------------------------------------------------------------- 8: validation before I/O


@pytest.mark.parametrize("param,value,flag", [
    ("capacity", 0, "--max-length"), ("capacity", 2**40, "--max-length"), ("strategy", "best", "--strategy"),
    ("seed", -1, "--seed"), ("filler", 1.5, "--filler"), ("overflow", "wrap", "--overflow"),
    ("shard_size", 0, "--shard-size"), ("plan", "x", "--plan"), ("group_size", 0, "--group-size"),
    ("max_loss", 2.0, "--max-loss"), ("capacity", True, None), ("columns", "labels", None),
])
def test_every_config_field_is_checked_at_construction(param, value, flag):
    """Finding 8: PackConfig(capacity=0) was refused only after the scan, which may have staged files."""
    with pytest.raises(ConfigError, match=rf"PackConfig\({param}=") as e:
        PackConfig(**{param: value})
    assert e.value.param == param
    if flag is not None:
        from packer.cli.pack import FLAGS

        assert FLAGS[param] == flag


def test_numpy_numbers_in_the_config_are_stored_as_python_numbers(tmp_path):
    """np.int64(20000) passed every check, then made the manifest unwritable after all shards were packed."""
    config = PackConfig(capacity=np.int64(64), seed=np.int32(3), shard_size=np.int64(2), filler=np.float32(0.25),
                        max_loss=np.float64(0.5), pad_to_multiple_of=np.int64(8))
    assert all(type(v) in (int, float) for k, v in config.to_json().items() if k not in ("strategy", "overflow",
                                                                                           "plan", "columns"))
    src = write_arrow_file(tmp_path / "in.arrow", readable_table([3, 5, 9]))
    assert pack_dataset(src, tmp_path / "out", config=config, progress=False)["config"]["capacity"] == 64


@pytest.mark.parametrize("kw,param", [({"input_ids": ""}, "input_ids"), ({"labels": 3}, "labels"),
                                      ({"labels": "a", "loss_mask": "b"}, "loss_mask"),
                                      ({"labels": "input_ids"}, "labels")])
def test_columns_are_checked_at_construction(kw, param):
    with pytest.raises(ConfigError) as e:
        Columns(**kw)
    assert e.value.param == param


def test_cli_errors_name_the_flag_and_nothing_is_read(tmp_path, capsys, monkeypatch):
    import packer.convert as convert

    monkeypatch.setattr(convert, "scan_inputs", lambda *a, **k: pytest.fail("scanned before checking the options"))
    src = write_arrow_file(tmp_path / "in.arrow", readable_table([3]))
    refused(capsys, ["pack", str(src), "-o", str(tmp_path / "out"), "--filler", "2"], "--filler 2.0: filler must be")
    refused(capsys, ["pack", str(src), "-o", str(tmp_path / "out"), "--input-column", ""], "--input-column : must be")


# --------------------------------------------------------------------------------- datasets objects and text input


def test_in_memory_datasets_objects(tmp_path):
    import datasets

    table = readable_table([3, 5, 2, 7], labels=True)
    src = write_arrow_file(tmp_path / "in.arrow", table)
    files = pack_dataset(src, tmp_path / "files", config=PackConfig(capacity=8), progress=False)
    ds = datasets.Dataset(table)
    m = pack_dataset(ds, tmp_path / "mem", config=PackConfig(capacity=8), progress=False, verify=True)
    assert shard_bytes(tmp_path / "mem") == shard_bytes(tmp_path / "files")
    assert m["config"] == files["config"] and m["stats"] == files["stats"]
    assert m["input"]["files"][0]["path"] == f"datasets.Dataset(fingerprint={ds._fingerprint})"
    again = pack_dataset(ds, tmp_path / "mem", config=PackConfig(capacity=8), progress=False)  # already there
    assert again["manifest_checksum"] == m["manifest_checksum"]
    # a selection is packed as the dataset shows it, not as its cache files hold it
    pack_dataset(ds.select([3, 1]), tmp_path / "sel", config=PackConfig(capacity=8), progress=False)
    check_packed(tmp_path / "sel", [np.full(7, 3), np.full(5, 1)], [rows(table, "labels")[i] for i in (3, 1)],
                 capacity=8, overflow="drop")
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    with pytest.raises(PackerError, match="DatasetDict with splits train, test"):
        pack_dataset(dd, tmp_path / "dd", progress=False)
    m = pack_dataset(dd, tmp_path / "dd", config=PackConfig(capacity=8), split="test", progress=False)
    assert m["input"]["rows"] == 1
    assert not list(tmp_path.glob(".packer-tmp-*"))


def test_text_input_points_to_the_tokenize_then_pack_example(tmp_path, capsys):
    import datasets

    (tmp_path / "data.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    refused(capsys, ["pack", str(tmp_path / "data.jsonl"), "-o", str(tmp_path / "out")], "packer takes token ids",
            "docs/input.md")
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "part.jsonl").write_text('{"text": "hello"}\n')
    refused(capsys, ["pack", str(tmp_path / "jsonl"), "-o", str(tmp_path / "out")], "packer takes token ids")
    write_parquet(tmp_path / "text.parquet", pa.table({"text": ["hello", "world"]}))
    refused(capsys, ["pack", str(tmp_path / "text.parquet"), "-o", str(tmp_path / "out")], "column 'text' holds text",
            "docs/input.md")
    with pytest.raises(PackerError, match="packer takes token ids"):
        pack_dataset(datasets.Dataset.from_dict({"text": ["a", "b"]}), tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------- property: layout-independence


WRITERS = [write_arrow_file, write_arrow_stream, write_parquet]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_split_into_files_and_any_file_order_means_the_same(tmp_path_factory, data):
    """The same rows cut into files in any way give the same shards, byte for byte; the files in another order
    give the same packs up to which of two equal-length rows sits where (``seq_index`` numbers rows in the order
    the files are given), and the same statistics. Files that disagree on labels are refused whatever the layout."""
    tmp = tmp_path_factory.mktemp("layout")
    lengths = data.draw(st.lists(st.integers(0, 14), min_size=1, max_size=30))
    table = readable_table(lengths, labels=True)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(lengths) - 1)), max_size=4)))
    bounds = [0] + [c for c in cuts if c < len(lengths)] + [len(lengths)]
    parts = [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    unlabelled = data.draw(st.sets(st.integers(0, len(parts) - 1))) if len(parts) > 1 else set()
    files = []
    for k, part in enumerate(parts):
        if k in unlabelled:
            part = part.drop_columns(["labels"])
        files.append(data.draw(st.sampled_from(WRITERS))(tmp / f"part-{k}.bin", part))
    order = data.draw(st.permutations(range(len(files))))
    config = PackConfig(capacity=16, overflow=data.draw(st.sampled_from(["drop", "truncate", "split"])),
                        shard_size=3)
    if unlabelled and len(unlabelled) < len(parts):
        for arrangement in (files, [files[k] for k in order]):
            with pytest.raises(PackerError, match="'labels' is in"):
                pack_dataset(arrangement, tmp / "refused", config=config, progress=False)
        return
    if sum(lengths) == 0:
        return
    single = write_arrow_file(tmp / "whole.arrow", table.drop_columns(["labels"]) if unlabelled else table)
    whole = pack_dataset(single, tmp / "whole", config=config, progress=False)
    cut = pack_dataset(files, tmp / "cut", config=config, progress=False)
    assert shard_bytes(tmp / "cut") == shard_bytes(tmp / "whole")
    assert cut["stats"] == whole["stats"] and cut["config"] == whole["config"]
    shuffled = pack_dataset([files[k] for k in order], tmp / "shuffled", config=config, progress=False)
    assert shuffled["stats"] == whole["stats"]
    _, a = read_packed(tmp / "whole")
    _, b = read_packed(tmp / "shuffled")
    # the same packs as multisets of sequence lengths, and the same sequences overall
    def shape(t):
        return sorted(tuple(sorted(np.diff(np.asarray(c.values)).tolist())) for c in t.column(fmt.CU_SEQLENS))

    def seqs(t):
        ids = [np.asarray(x.values) for x in t.column(fmt.INPUT_IDS)]
        cus = [np.asarray(x.values) for x in t.column(fmt.CU_SEQLENS)]
        return sorted(tuple(i[c[k]:c[k + 1]].tolist()) for i, c in zip(ids, cus) for k in range(len(c) - 1))

    assert shape(a) == shape(b) and seqs(a) == seqs(b)


def test_scan_decides_columns_before_staging(tmp_path):
    """The column decision reads every schema first: a disagreement leaves nothing staged."""
    a = write_parquet(tmp_path / "a.parquet", readable_table([3]))
    b = write_parquet(tmp_path / "b.parquet", readable_table([2], labels=True))
    with pytest.raises(PackerError, match="'labels' is in 1 of 2"):
        scan_inputs([a, b], staging=str(tmp_path / "stage"))
    assert not (tmp_path / "stage").exists()
    assert Columns().labels == DETECT and Columns(labels="x").loss_mask is None


def test_the_docs_examples_tokenize_then_pack_and_unpad(tmp_path):
    """docs/input.md: a datasets.map tokenizer (no padding) packs as is; padded rows pack once unpadded."""
    import datasets

    def tokenize(batch):  # stands in for a Hugging Face tokenizer: input_ids and an all-ones attention_mask
        ids = [[ord(c) for c in text] for text in batch["text"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}

    (tmp_path / "data.jsonl").write_text("".join(f'{{"text": "{"ab" * (i + 1)}"}}\n' for i in range(4)))
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "data.jsonl"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    ds = ds.map(tokenize, batched=True, remove_columns=ds.column_names)
    ds.save_to_disk(str(tmp_path / "tokenized"))
    assert main(["-q", "pack", str(tmp_path / "tokenized"), "-o", str(tmp_path / "packed"), "--max-length", "16"]) == 0
    want = [np.asarray([ord(c) for c in "ab" * (i + 1)]) for i in range(4)]
    check_packed(tmp_path / "packed", want, None, capacity=16, overflow="drop")

    def unpad(row):  # as in docs/input.md
        keep = [i for i, m in enumerate(row["attention_mask"]) if m]
        return {name: [row[name][i] for i in keep] for name in ("input_ids", "labels", "attention_mask") if name in row}

    padded = datasets.Dataset(_padded([3, 8, 5], 8, side="left"))
    with pytest.raises(PackerError, match="left-padded"):
        pack_dataset(padded, tmp_path / "p", progress=False)
    pack_dataset(padded.map(unpad), tmp_path / "p", config=PackConfig(capacity=16), progress=False)
    check_packed(tmp_path / "p", [np.full(n, i) for i, n in enumerate([3, 8, 5])], None, capacity=16, overflow="drop")


def test_a_padded_in_memory_dataset_is_refused_naming_the_dataset(tmp_path):
    """Padding in a datasets.Dataset (float mask too) is refused, and the message names the dataset, not the
    staged copy packer scanned."""
    import datasets

    d = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]],
                                    "attention_mask": [[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]]})
    with pytest.raises(PackerError, match=r"^datasets\.Dataset\(fingerprint=\w+\): column 'attention_mask' is 0"):
        pack_dataset(d, tmp_path / "out", config=PackConfig(capacity=16), progress=False)
    assert not (tmp_path / "out").exists()
