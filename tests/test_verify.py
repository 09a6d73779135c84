"""packer verify: clean folders pass every check; each planted defect is caught by the check meant for it."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pyarrow as pa
import pytest

from packer import jobs
from packer import format as fmt
from packer.cli import main
from packer.convert import PackConfig, pack_dataset
from packer.errors import PackerError
from packer.packed_reader import PackedReader
from packer.input import Columns
from packer.verify import CHECKS, INPUT_CHECKS, reseal_manifest, verify_packed
from tests._manifest_helpers import rewrite_manifest, set_capacity
from tests._verify_helpers import lengths_mixed, read_shard_rows, rewrite_shard, rows_table, write_stream

CAPACITY = 64
SHARD = 4


@pytest.fixture
def packed(tmp_path):
    """60 rows of 1-39 tokens, one empty and one too long (dropped), labels column; 4 packs per shard."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 60).tolist() + [0, 100]
    src = write_stream(rows_table(lengths, labels=True), tmp_path / "in.arrow")
    out = tmp_path / "out"
    pack_dataset(src, out, config=PackConfig(capacity=CAPACITY, shard_size=SHARD, columns=Columns(labels="labels")),
                 progress=False)
    return src, out


def _pack_with(rows, pred):
    """Index of the first pack (row of a shard) satisfying ``pred``."""
    return next(i for i, r in enumerate(rows) if pred(r))


def test_clean_folder_passes_every_check(packed):
    src, out = packed
    report = verify_packed(out, inputs=[src])
    assert report.ok, report.format()
    assert [c.status for c in report.checks] == ["ok"] * len(CHECKS)
    assert report.input_rows == 62 and report.sequences == 60
    plain = verify_packed(out)
    assert plain.ok
    assert {c.name for c in plain.checks if c.status == "skipped"} == set(INPUT_CHECKS)


@pytest.mark.parametrize("overflow", ["drop", "truncate", "split"])
@pytest.mark.parametrize("mode", ["ids", "labels", "mask"])
def test_every_policy_and_label_source_verifies(tmp_path, overflow, mode):
    lengths = lengths_mixed(np.random.default_rng(1), 50, 30)
    table = rows_table(lengths, labels=mode == "labels", loss_mask=mode == "mask")
    src = write_stream(table, tmp_path / "in.arrow", max_chunksize=7)  # several input chunks
    columns = Columns(labels="labels") if mode == "labels" else Columns(loss_mask="loss_mask") \
        if mode == "mask" else Columns()
    out = tmp_path / "out"
    pack_dataset(src, out, config=PackConfig(capacity=30, overflow=overflow, shard_size=3, columns=columns),
                 progress=False)
    report = verify_packed(out, inputs=[src])
    assert report.ok, report.format()
    stats = fmt.read_manifest(out)["stats"]
    assert stats["tokens_in"] == stats["tokens_out"] + stats["tokens_dropped"] + stats["tokens_truncated"]


def test_flipped_token(packed):
    src, out = packed
    rows = read_shard_rows(out, 1)
    p = _pack_with(rows, lambda r: len(r["seq_index"]) >= 2)
    cu = rows[p]["cu_seqlens"]
    t = cu[1] + 1  # second token of the pack's second sequence
    rows[p]["input_ids"][t] ^= 1
    rewrite_shard(out, 1, rows, fix_checksum=False)
    assert verify_packed(out).failed() == ["checksums"]
    rewrite_shard(out, 1, rows)  # fix the checksum: now only the comparison with the input can tell
    assert verify_packed(out).ok
    report = verify_packed(out, inputs=[src])
    assert report.failed() == ["tokens"]
    (d,) = report.defects
    assert (d.shard, d.pack, d.row) == (fmt.shard_name(1, len(fmt.read_manifest(out)["shards"])), SHARD + p,
                                         rows[p]["seq_index"][1])
    assert "input_ids differ at 1 of" in d.message and "first at token 1" in d.message


def test_dropped_sequence(packed):
    src, out = packed
    rows = read_shard_rows(out, 0)
    p = _pack_with(rows, lambda r: len(r["seq_index"]) >= 2)
    r = rows[p]
    cut = r["cu_seqlens"][-2]
    lost_row = r["seq_index"][-1]
    r["input_ids"], r["labels"] = r["input_ids"][:cut], r["labels"][:cut]
    for key in ("cu_seqlens", "seq_index", "seq_offset"):
        r[key] = r[key][:-1]
    rewrite_shard(out, 0, rows)
    assert "counts" in verify_packed(out).failed()
    report = verify_packed(out, inputs=[src])
    assert "coverage" in report.failed()
    missing = [d for d in report.defects if d.check == "coverage" and "in no pack" in d.message]
    assert [d.row for d in missing] == [lost_row]


def test_duplicated_sequence(packed):
    src, out = packed
    rows = read_shard_rows(out, 0)
    a = _pack_with(rows, lambda r: len(r["seq_index"]) >= 2)
    cu = rows[a]["cu_seqlens"]
    ids, labels = rows[a]["input_ids"][cu[0] : cu[1]], rows[a]["labels"][cu[0] : cu[1]]
    # packs are full (best fit), so the copy goes into a new pack at the end of the shard
    rows.append({"input_ids": ids, "labels": labels, "cu_seqlens": [0, len(ids)],
                 "seq_index": [rows[a]["seq_index"][0]], "seq_offset": [0]})
    rewrite_shard(out, 0, rows)
    plain = verify_packed(out)
    assert "provenance" in plain.failed()
    dup = next(d for d in plain.defects if d.check == "provenance")
    assert "packed twice" in dup.message and dup.row == rows[a]["seq_index"][0]
    report = verify_packed(out, inputs=[src])
    assert any(d.check == "coverage" and "in 2 packs" in d.message for d in report.defects)


def test_unmasked_boundary_label(packed):
    src, out = packed
    rows = read_shard_rows(out, 2)
    p = _pack_with(rows, lambda r: len(r["seq_index"]) >= 2)
    start = rows[p]["cu_seqlens"][1]
    rows[p]["labels"][start] = rows[p]["input_ids"][start]
    rewrite_shard(out, 2, rows)
    report = verify_packed(out)
    assert report.failed() == ["labels", "counts"]  # the manifest's label-token count no longer adds up either
    (d,) = [d for d in report.defects if d.check == "labels"]
    assert d.pack == 2 * SHARD + p and d.row == rows[p]["seq_index"][1]
    assert "sequence 1 of the pack" in d.message and "not -100" in d.message


@pytest.mark.parametrize("damage", ["end", "swap", "shift"])
def test_corrupted_cu_seqlens(packed, damage):
    src, out = packed
    rows = read_shard_rows(out, 1)
    p = _pack_with(rows, lambda r: len(r["seq_index"]) >= 3)
    cu = rows[p]["cu_seqlens"]
    if damage == "end":
        cu[-1] -= 1
    elif damage == "swap":
        cu[1], cu[2] = cu[2], cu[1]
    else:
        cu[1] += 1  # still increasing: the boundaries moved, so the sequences no longer match the input
    rewrite_shard(out, 1, rows)
    report = verify_packed(out, inputs=[src])
    assert not report.ok
    if damage == "shift":
        assert "coverage" in report.failed()
    else:
        assert "cu_seqlens" in report.failed()
        d = next(d for d in report.defects if d.check == "cu_seqlens")
        assert d.pack == SHARD + p


def test_missing_shard(packed):
    src, out = packed
    name = fmt.read_manifest(out)["shards"][2]["file"]
    (out / name).unlink()
    for report in (verify_packed(out), verify_packed(out, inputs=[src])):
        assert "files" in report.failed()
        d = next(d for d in report.defects if d.check == "files")
        assert d.shard == name and "missing" in d.message


def test_defects_are_capped_but_counted(packed):
    src, out = packed
    for i in range(len(fmt.read_manifest(out)["shards"])):
        rows = read_shard_rows(out, i)
        for r in rows:
            r["labels"] = list(r["input_ids"])  # every sequence start unmasked
        rewrite_shard(out, i, rows)
    report = verify_packed(out, max_defects=3)
    assert report.check("labels").defects == 60
    assert len([d for d in report.defects if d.check == "labels"]) == 3
    assert f"first {len(report.defects)} of {report.n_defects}" in report.format()


def test_cli_exit_codes(packed, capsys):
    src, out = packed
    assert main(["verify", str(out), "--input", str(src)]) == 0
    assert "OK" in capsys.readouterr().out
    rows = read_shard_rows(out, 0)
    rows[0]["labels"][0] = 5
    rewrite_shard(out, 0, rows)
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "FAIL labels" in text and "pack 0" in text
    assert main(["verify", str(out), "--input", str(out / "nope.arrow")]) == 2
    assert main(["verify", str(out.parent / "nothing-here")]) == 1  # not a packed folder: reported, not raised


def test_pack_verify_flag_catches_a_converter_bug(tmp_path, monkeypatch, caplog):
    src = write_stream(rows_table([5, 9, 3, 7, 2], labels=True), tmp_path / "in.arrow")
    real = jobs.build_shard

    def buggy(*args, **kwargs):
        table, n = real(*args, **kwargs)
        rows = table.to_pylist()
        rows[0]["input_ids"][-1] += 1  # a converter that corrupts one token
        return pa.Table.from_pylist(rows, schema=fmt.SCHEMA), n

    monkeypatch.setattr(jobs, "build_shard", buggy)
    cfg = PackConfig(capacity=16, columns=Columns(labels="labels"))
    # the messages name the output, not the temporary folder the check ran in
    with pytest.raises(PackerError, match=re.escape(f"{tmp_path / 'out'}: verification failed")):
        pack_dataset(src, tmp_path / "out", config=cfg, progress=False, verify=True)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(fmt.TMP_DIR_PREFIX)]
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="packer.convert"):
        pack_dataset(src, tmp_path / "out", config=cfg, progress=False, verify=True)
    assert f"verify {tmp_path / 'out'}: OK" in caplog.text
    assert verify_packed(tmp_path / "out", inputs=[src]).ok


@pytest.mark.parametrize("strategy", ["bfd", "shuffle"])
def test_two_runs_are_byte_identical(tmp_path, strategy):
    lengths = lengths_mixed(np.random.default_rng(2), 80, 40)
    src = write_stream(rows_table(lengths, labels=True), tmp_path / "in.arrow")
    cfg = PackConfig(capacity=40, strategy=strategy, seed=3, shard_size=4, overflow="split",
                     columns=Columns(labels="labels"))
    outs = [tmp_path / "a", tmp_path / "b"]
    for o in outs:
        pack_dataset(src, o, config=cfg, progress=False)
    ma, mb = (json.loads((o / fmt.MANIFEST_FILE).read_text()) for o in outs)
    assert ma.pop("run") is not None and mb.pop("run") is not None
    assert ma == mb
    for s in ma["shards"]:
        assert (outs[0] / s["file"]).read_bytes() == (outs[1] / s["file"]).read_bytes()
    for name in (fmt.HF_STATE_FILE, fmt.HF_INFO_FILE):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


@pytest.mark.parametrize("edit", ["capacity", "stat", "fingerprint"])
def test_edited_manifest_is_caught_by_its_checksum(packed, edit):
    """Edits no cross-check sees: capacity 64 -> 65 still fits every pack, a derived statistic, the input
    fingerprint (without --input). The manifest checksum finds each, and the other checks still run."""
    src, out = packed

    def mutate(m):
        if edit == "capacity":
            set_capacity(m, m["config"]["capacity"] + 1)
        elif edit == "stat":
            m["stats"]["packing_efficiency"] /= 2
        else:
            m["input"]["fingerprint"] = "f" * 64

    rewrite_manifest(out, mutate, seal=False)
    report = verify_packed(out)
    assert report.failed() == ["manifest_checksum"]
    (d,) = report.defects
    assert f"{out / fmt.MANIFEST_FILE}: the manifest was modified or damaged after packing" in d.message
    assert "re-run 'packer pack'" in d.message and "--reseal" in d.message
    assert report.packs == fmt.read_manifest(out, checksum=False)["stats"]["packs"]  # the shards were still checked
    with pytest.raises(PackerError, match=r"packer\.json: the manifest was modified or damaged after packing"):
        fmt.read_manifest(out)
    full = verify_packed(out, inputs=[src])
    assert full.failed()[0] == "manifest_checksum"
    if edit == "fingerprint":  # the input check sees this one too
        assert full.failed() == ["manifest_checksum", "input"]
    # sealed again, the edit is the user's: only a check that can see it still fails
    rewrite_manifest(out, lambda m: None)
    assert verify_packed(out).ok
    assert verify_packed(out, inputs=[src]).failed() == (["input"] if edit == "fingerprint" else [])


def test_manifest_without_checksum_is_refused_unless_allowed(packed, caplog, monkeypatch):
    """A manifest without its checksum (an older packer's, or the key deleted) is refused by every reader and is a
    verify defect by default; allow_unsealed / --allow-unsealed reads it as before (one warning; verify notes it)."""
    src, out = packed
    monkeypatch.setattr(fmt, "_unsealed_warned", set())  # forget folders warned about earlier in this process
    rewrite_manifest(out, lambda m: m.pop(fmt.MANIFEST_CHECKSUM), seal=False)
    report = verify_packed(out, inputs=[src])
    assert report.failed() == ["manifest_checksum"]
    (d,) = report.defects
    assert "has no 'manifest_checksum'" in d.message and "--reseal" in d.message and "--allow-unsealed" in d.message
    assert main(["verify", str(out)]) == 1
    assert main(["verify", str(out), "--allow-unsealed"]) == 0
    with pytest.raises(PackerError, match=r"packer\.json: the manifest has no 'manifest_checksum'.*--reseal.*"
                       r"allow_unsealed=True \(--allow-unsealed"):
        fmt.read_manifest(out)
    with pytest.raises(PackerError, match="allow_unsealed=True"):
        PackedReader(out)
    assert main(["stats", str(out)]) == 2
    assert main(["stats", str(out), "--allow-unsealed"]) == 0
    report = verify_packed(out, inputs=[src], allow_unsealed=True)
    assert report.ok, report.format()
    c = report.check("manifest_checksum")
    assert c.status == "skipped" and "manifest has no checksum (written by an older packer)" in c.detail
    assert "skip manifest_checksum manifest has no checksum" in report.format()
    caplog.clear()
    monkeypatch.setattr(fmt, "_unsealed_warned", set())
    for _ in range(3):
        fmt.read_manifest(out, allow_unsealed=True)
    assert len(PackedReader(out, allow_unsealed=True)) == report.packs
    warned = [r for r in caplog.records if "has no manifest_checksum" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and "--reseal" in warned[0].getMessage()


def test_reseal(packed, capsys):
    src, out = packed
    path = out / fmt.MANIFEST_FILE
    assert main(["verify", str(out), "--reseal"]) == 0
    assert "already sealed" in capsys.readouterr().out
    original = fmt.read_manifest(out)
    # a deliberate edit: refused on open, resealed by verify after the shards agree with it
    rewrite_manifest(out, lambda m: set_capacity(m, CAPACITY + 1), seal=False)
    assert main(["verify", str(out)]) == 1
    assert "FAIL manifest_checksum" in capsys.readouterr().out
    assert main(["verify", str(out), "--input", str(src), "--reseal"]) == 0
    assert "resealed packer.json" in capsys.readouterr().out
    m = fmt.read_manifest(out)
    assert m["config"]["capacity"] == CAPACITY + 1 and m[fmt.MANIFEST_CHECKSUM] != original[fmt.MANIFEST_CHECKSUM]
    assert list(m) == list(original) and path.read_text().startswith('{\n  "format"')  # layout kept
    assert verify_packed(out).ok
    # an older packer's folder gets its first checksum
    rewrite_manifest(out, lambda m: m.pop(fmt.MANIFEST_CHECKSUM), seal=False)
    report, resealed = reseal_manifest(out)
    assert resealed and report.failed() == ["manifest_checksum"]  # the report of the folder before resealing
    assert fmt.check_manifest_checksum(fmt.read_manifest(out), path) and verify_packed(out).ok
    # an edit the shards contradict is not resealed
    rewrite_manifest(out, lambda m: m["shards"][0].update(rows=m["shards"][0]["rows"] + 1), seal=False)
    before = path.read_bytes()
    assert main(["verify", str(out), "--reseal"]) == 1
    text = capsys.readouterr().out
    assert "not resealed" in text and "FAIL manifest_checksum" in text and "FAIL schema" in text
    assert path.read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_pack_with_an_empty_cu_seqlens_list_is_a_defect_not_a_crash(packed):
    """The seq_lengths check indexed past an empty cu_seqlens list in a shard's last pack (IndexError) before the
    cu_seqlens checks could report it."""
    _, out = packed
    rows = read_shard_rows(out, 1)
    rows[-1][fmt.CU_SEQLENS] = []  # the shard's last pack: nothing after it to index into
    rewrite_shard(out, 1, rows)
    report = verify_packed(out)
    assert not report.ok and "cu_seqlens" in report.failed()
    assert main(["verify", str(out)]) == 1
