"""The read side's checks: no unchecked kernel on damaged offsets (numba bounds checking on), the manifest schema,
regular files only, and one version of a folder per reader while ``packer pack --overwrite`` replaces it."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from packer import format as fmt
from packer.cli import main
from packer.convert import PackConfig, pack_dataset
from packer.errors import PackerError
from packer.packed_reader import REPLACED, PackedReader
from packer.verify import verify_packed
from tests._manifest_helpers import load_manifest, rewrite_manifest, set_capacity
from tests._torch_helpers import run_env

REPO = Path(__file__).resolve().parents[1]
CAP = 64


def _input(path: Path, first_token: int, lengths) -> Path:
    """Row ``i`` is ``[first_token + i] * lengths[i]``: every pack's tokens say which rows (and version) it holds."""
    ids = [[first_token + i] * int(n) for i, n in enumerate(lengths)]
    table = pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int32()))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path


def _pack(src: Path, out: Path, **kw) -> Path:
    pack_dataset([src], out, config=PackConfig(capacity=CAP, shard_size=4), progress=False, **kw)
    return out


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two inputs and their packs, read back as the reference: the same lengths, so that the two versions' shards
    have the same sizes and rows (nothing but the data tells them apart), and tokens 1000+ and 5000+."""
    tmp = tmp_path_factory.mktemp("versions")
    lengths = np.random.default_rng(0).integers(1, 30, 50)
    srcs = [_input(tmp / "a.arrow", 1000, lengths), _input(tmp / "b.arrow", 5000, lengths)]
    refs = {}
    for k, src in enumerate(srcs):
        r = PackedReader(_pack(src, tmp / f"ref{k}"))
        refs[r.manifest[fmt.MANIFEST_INPUT]["fingerprint"]] = [r.pack(i)[0].copy() for i in range(len(r))]
    assert len(refs) == 2
    return srcs, refs


def _read_all(r: PackedReader) -> list[np.ndarray]:
    return [r.pack(i)[0].copy() for i in range(len(r))]


# ------------------------------------------------------------------------------------------------ kernels, bounds

_BOUNDS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba import config
    assert config.BOUNDSCHECK == 1
    from packer import kernels
    from packer.errors import PackerError
    from packer.torch import PackedDataset

    n, cap = 40, 64
    ids = np.arange(1, n + 1, dtype=np.int32)
    labels = ids.copy(); labels[[0, 10, 25]] = -100
    good = np.array([0, 10, 25, n], dtype=np.int32)
    crafted = [2**31 - 1, 1_000_000, -1, -2**31, 0, 9, 10, 11, 25, 26, n, n + 1, cap + 1]
    unchecked_oob = checked_oob = refused = 0
    for k in range(good.shape[0]):
        for v in crafted:
            cu = good.copy(); cu[k] = v
            rows = np.zeros((3, cap), dtype=np.int64)
            cu_out = np.zeros(cu.shape[0] + 1, dtype=np.int32)
            try:  # what the reader ran before: the fill kernel on whatever cu_seqlens the shard held
                kernels.fill_padded_pack(ids, labels, cu, rows[0], rows[1], rows[2], cu_out, 0, -100)
            except IndexError:
                unchecked_oob += 1
            if kernels.check_cu_seqlens(cu, n) >= 0:
                refused += 1
                continue
            try:
                kernels.fill_padded_pack(ids, labels, cu, rows[0], rows[1], rows[2], cu_out, 0, -100)
            except IndexError:
                checked_oob += 1
    folders = {}
    for folder in sys.argv[1:]:
        try:
            ds = PackedDataset(folder)
            for i in range(len(ds)):
                ds[i]
            ds.attention_costs()
            folders[folder] = "read"
        except PackerError:
            folders[folder] = "refused"
    print(json.dumps({"unchecked_oob": unchecked_oob, "checked_oob": checked_oob, "refused": refused,
                      "folders": folders}))
""")


def _poke(folder: Path, shard: int, column: str, part: str, index: int, value: int) -> None:
    """Overwrite int32 number ``index`` of a column's ``values`` or ``offsets`` buffer in a shard; re-seal."""
    m = load_manifest(folder)
    path = folder / m[fmt.MANIFEST_SHARDS][shard][fmt.SHARD_FILE]
    data = bytearray(path.read_bytes())
    buf = pa.py_buffer(bytes(data))
    arr = pa.ipc.open_stream(buf).read_all().column(column).chunk(0)
    target = arr.buffers()[1] if part == "offsets" else arr.values.buffers()[1]
    at = target.address - buf.address + 4 * index
    data[at : at + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(data))

    def reseal(m):
        m[fmt.MANIFEST_SHARDS][shard][fmt.SHARD_CHECKSUM] = fmt.file_checksum(path)

    rewrite_manifest(folder, reseal)


def test_kernels_never_index_out_of_bounds_on_damaged_offsets(tmp_path, versions):
    """With numba's bounds checking on (NUMBA_BOUNDSCHECK=1, in a subprocess with a cache of its own), crafted
    cu_seqlens make the unchecked fill kernel index out of bounds (so the test can fail), and none reaches it past
    check_cu_seqlens; folders damaged in cu_seqlens and offsets are refused, never read out of bounds."""
    srcs, _ = versions
    base = _pack(srcs[0], tmp_path / "base")
    folders = []
    for k, (column, part, index, value) in enumerate([
        (fmt.CU_SEQLENS, "values", 1, 2**31 - 1), (fmt.CU_SEQLENS, "values", 2, -1),
        (fmt.CU_SEQLENS, "values", 1, 1_000_000), (fmt.CU_SEQLENS, "offsets", 2, 10**6),
        (fmt.INPUT_IDS, "offsets", 1, 10**6), (fmt.LABELS, "offsets", 2, -5), (fmt.CU_SEQLENS, "offsets", 1, 0),
    ]):
        folder = tmp_path / f"d{k}"
        folder.mkdir()
        for p in base.iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        _poke(folder, 0, column, part, index, value)
        folders.append(str(folder))
    env = run_env()
    env.update(NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.run([sys.executable, "-c", _BOUNDS_SCRIPT, *folders], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["unchecked_oob"] > 0 and out["refused"] > 0, out
    assert out["checked_oob"] == 0, out
    assert set(out["folders"].values()) == {"refused"}, out


@pytest.mark.parametrize("value, why", [
    (2**31 - 1, "does not strictly increase"), (-1, "does not strictly increase"), (0, "does not strictly increase"),
    (1_000_000, "does not strictly increase"),
])
def test_damaged_cu_seqlens_is_a_packer_error_naming_shard_and_row(tmp_path, versions, value, why):
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    r = PackedReader(folder)
    row = 2
    cu = r.pack(row)[2]
    assert cu.shape[0] >= 3  # a middle entry exists
    start = int(r._shards[0].batches[0].cu.offsets[row])
    _poke(folder, 0, fmt.CU_SEQLENS, "values", start + 1, value)
    r = PackedReader(folder)  # offsets are sound: opens; the pack is refused when read
    with pytest.raises(PackerError, match=rf"data-00000-of-\d+\.arrow: row {row}: cu_seqlens {why}"):
        r.pack(row)
    with pytest.raises(PackerError, match=rf"row {row}: cu_seqlens"):
        r.attention_costs()  # PackSampler's input: a PackerError, not an IndexError or a silent cost
    assert main(["verify", str(folder)]) == 1


# ------------------------------------------------------------------------------------------------ manifest schema


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"].update(capacity=10**6), r"stats\.capacity is 64 but config\.capacity is 1,000,000"),
    # more than packer ever writes, even restated in the stats: every item would be that long (48 GiB at 2**31 - 1)
    (lambda m: set_capacity(m, 2**31 - 1), r"config\.capacity is 2147483647, not an integer in 1\.\.16,777,216"),
    (lambda m: m["shards"].pop(), r"shard entry 0 names file 'data-00000-of-\d+\.arrow', expected"),
    (lambda m: m["shards"][0].update(file="../../outside/x.arrow"), r"names file '\.\./\.\./outside/x\.arrow'"),
    (lambda m: m["shards"][0].update(rows="3"), r"shard entry 0 has rows '3', not a non-negative integer"),
    (lambda m: m["stats"].pop("packs"), r"stats\.packs is None"),
    (lambda m: m["stats"].update(tokens_in="12"), r"stats\.tokens_in is '12'"),
    (lambda m: m["stats"].update(mean_length_in=float("nan")), r"stats\.mean_length_in is nan, not a finite"),
    # optional statistics (newer packers, aligned folders) are typed too: packer stats formatted them (fuzz seed 8)
    (lambda m: m["stats"].update(sequences_untrainable="x"), r"stats\.sequences_untrainable is 'x', not a non-neg"),
    (lambda m: m["stats"].update(loss_tokens="x"), r"stats\.loss_tokens is 'x', not a finite number"),
    (lambda m: m["stats"].pop("loss_tokens"), r"stats has sequences_untrainable, .* but not loss_tokens"),
    (lambda m: m.update(config=[1]), r"config is list, not an object"),
    (lambda m: m["input"].update(deep=json.loads("[" * 40 + "]" * 40)), r"nests deeper than 32 levels"),
])
def test_malformed_manifest_is_refused_by_every_reader(tmp_path, versions, capsys, edit, message):
    """Sealed (so the checksum passes) yet malformed: the dataset, stats, report and verify each refuse it with a
    message naming the field, never a TypeError/KeyError/RecursionError traceback."""
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    rewrite_manifest(folder, edit)
    with pytest.raises(PackerError, match=message):
        PackedReader(folder)
    for argv, code in ((["stats"], 2), (["report"], 2), (["verify"], 1)):
        assert main([*argv, str(folder)]) == code
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
    assert not verify_packed(folder).ok


def test_manifest_nested_100000_deep_or_huge(tmp_path, versions, capsys):
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    path = folder / fmt.MANIFEST_FILE
    path.write_text('{"format": "packer.packed", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PackerError, match="nested too deep"):
        PackedReader(folder)
    assert main(["verify", str(folder)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    with open(path, "r+b") as fh:
        fh.truncate(fmt.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(PackerError, match="more than a manifest can be"):
        PackedReader(folder)


def test_capacity_the_stats_contradict_is_a_verify_defect(tmp_path, versions):
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    rewrite_manifest(folder, lambda m: m["config"].update(capacity=10**6))
    report = verify_packed(folder)
    assert report.failed() == ["manifest"] and "config.capacity is 1,000,000" in report.format()
    # restated consistently (config and stats), it is what the manifest says: opens, items that long
    rewrite_manifest(folder, lambda m: set_capacity(m, 1000))
    assert verify_packed(folder).ok and PackedReader(folder).capacity == 1000
    longest = int(PackedReader(folder).num_tokens().max())
    rewrite_manifest(folder, lambda m: set_capacity(m, longest - 1))  # the totals still fit, one pack does not
    with pytest.raises(PackerError, match=rf"row \d+: the pack holds {longest} tokens; a pack holds 1 to the "
                       rf"capacity {longest - 1}"):
        PackedReader(folder)
    assert "capacity" in verify_packed(folder).failed()
    rewrite_manifest(folder, lambda m: set_capacity(m, 8))  # below the longest pack: refused on open
    with pytest.raises(PackerError, match=r"stats\.padding_tokens is -\d+, not a non-negative integer"):
        PackedReader(folder)
    assert "capacity" in verify_packed(folder).failed()


@pytest.mark.parametrize("bad", ["8", 0, -8, 7, True, 8.0, [8]])
def test_bad_pad_to_multiple_of_is_refused_at_open(tmp_path, versions, capsys, bad):
    """config.pad_to_multiple_of is checked with the manifest's schema (format.manifest_problems, the one rule of
    plan.pad_to_multiple_of_fault): the dataset, stats and report refuse it when they open the folder, naming the
    file, the field and the fix; verify reports it under its alignment check (the manifest check stays ok)."""
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    rewrite_manifest(folder, lambda m: m[fmt.MANIFEST_CONFIG].update({fmt.CONFIG_PAD_TO_MULTIPLE_OF: bad}))
    field = (f"config.pad_to_multiple_of is {fmt.short_repr(bad)}, not a positive integer that divides the capacity "
             f"{CAP}")
    with pytest.raises(PackerError, match=f"^{re.escape(str(folder / fmt.MANIFEST_FILE))}: malformed manifest: "
                       + re.escape(f"{field}; the folder is damaged, re-run 'packer pack'")):
        PackedReader(folder)
    for argv in (["stats"], ["report"]):
        assert main([*argv, str(folder)]) == 2
        assert field in capsys.readouterr().err
    report = verify_packed(folder)
    assert report.failed() == ["alignment"] and report.check("manifest").status == "ok"
    assert [str(d) for d in report.defects] == [f"alignment: {field}"]


def test_good_pad_to_multiple_of_is_not_a_manifest_problem(tmp_path, versions):
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    for value in (None, 1, 8, CAP):
        manifest = load_manifest(folder)
        manifest[fmt.MANIFEST_CONFIG][fmt.CONFIG_PAD_TO_MULTIPLE_OF] = value
        assert fmt.manifest_problems(manifest) == []
    manifest[fmt.MANIFEST_CONFIG][fmt.CONFIG_PAD_TO_MULTIPLE_OF] = 7
    assert fmt.manifest_field_problems(manifest) == [
        (fmt.CONFIG_PAD_PROBLEM, f"config.pad_to_multiple_of is 7, not a positive integer that divides the capacity "
         f"{CAP}")]
    manifest[fmt.MANIFEST_CONFIG][fmt.CONFIG_CAPACITY] = 0  # an unusable capacity is the problem, not N
    assert [k for k, _ in fmt.manifest_field_problems(manifest)] == [fmt.MANIFEST_CONFIG]


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("kind", ["symlink out", "symlink in", "fifo", "devnull"])
def test_shard_that_is_not_a_regular_file(tmp_path, versions, capsys, kind):
    """Refused by the dataset, report and verify (exit 1), without reading through the link or hanging on a FIFO."""
    srcs, _ = versions
    folder = _pack(srcs[0], tmp_path / "p")
    names = [s["file"] for s in load_manifest(folder)["shards"]]
    victim = folder / names[1]
    if kind == "symlink out":
        outside = tmp_path / "outside.arrow"
        outside.write_bytes(victim.read_bytes())
        victim.unlink()
        victim.symlink_to(outside)
    elif kind == "symlink in":
        victim.unlink()
        victim.symlink_to(names[0])
    elif kind == "fifo":
        victim.unlink()
        os.mkfifo(victim)
    else:
        victim.unlink()
        victim.symlink_to(os.devnull)
    what = "a FIFO" if kind == "fifo" else "a symlink"
    with pytest.raises(PackerError, match=rf"{names[1]}: the shard is {what}, not a regular file"):
        PackedReader(folder)
    assert main(["report", str(folder)]) == 2
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr()
    assert "not a regular file" in out.out and "Traceback" not in out.err


# ------------------------------------------------------------------------------------------------ one version


def test_worker_reopen_after_overwrite_refuses_instead_of_mixing(tmp_path, versions):
    """A reader pickled for a spawn/forkserver worker reopens shards by path: after --overwrite replaced the folder
    it raises (REPLACED) rather than reading the new version's shards under the old manifest; an unpickled reader
    of the unchanged folder reads the same packs."""
    srcs, refs = versions
    out = _pack(srcs[0], tmp_path / "out")
    r = PackedReader(out)
    same = pickle.loads(pickle.dumps(r))
    assert [a.tolist() for a in _read_all(same)] == [a.tolist() for a in _read_all(r)]
    _pack(srcs[1], out, overwrite=True)
    worker = pickle.loads(pickle.dumps(r))
    with pytest.raises(PackerError, match="reopen the dataset"):
        worker.pack(0)
    assert REPLACED in str(pytest.raises(PackerError, worker.pack, len(r) - 1).value)
    # the reader itself keeps its maps: the old version, whole
    assert [a.tolist() for a in _read_all(r)] == [a.tolist() for a in refs[r.manifest["input"]["fingerprint"]]]


def test_dataloader_workers_after_overwrite(tmp_path, versions):
    """A real DataLoader: spawn workers refuse a replaced folder; fork workers read the version opened."""
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from packer.torch import PackedDataset

    srcs, refs = versions
    out = _pack(srcs[0], tmp_path / "out")
    ds = PackedDataset(out, pad=False)
    want = refs[ds.manifest["input"]["fingerprint"]]
    _pack(srcs[1], out, overwrite=True)
    fork = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert [b["input_ids"].tolist() for b in fork] == [a.tolist() for a in want]
    spawn = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    with pytest.raises(Exception, match="reopen the dataset") as e:
        list(spawn)
    assert "PackerError" in str(e.value) or isinstance(e.value, PackerError)


_OVERWRITER = textwrap.dedent("""
    import os, sys, time
    from packer.convert import PackConfig, pack_dataset
    srcs, out, stop, count = sys.argv[1:3], sys.argv[3], sys.argv[4], sys.argv[5]
    end, k = time.monotonic() + 60, 0
    while not os.path.exists(stop) and time.monotonic() < end:
        pack_dataset([srcs[k % 2]], out, config=PackConfig(capacity=64, shard_size=4), progress=False,
                     overwrite=True)
        k += 1
        with open(count + ".tmp", "w") as f:
            f.write(str(k))
        os.replace(count + ".tmp", count)
    print(k)
""")


def test_readers_racing_overwrites_read_one_version(tmp_path, versions):
    """While another process replaces the folder with --overwrite again and again, every reader that opens
    reads exactly one version's packs (the one its manifest names), and its pickled copy (a spawn worker) reads the
    same packs or refuses; never packs of the other version. The race runs until this side has opened the folder
    5 times and the other has replaced it 4 times, however the two processes' speeds compare."""
    srcs, refs = versions
    out = _pack(srcs[0], tmp_path / "out")
    _read_all(PackedReader(out))  # compile the kernels before the race
    stop, count = tmp_path / "stop", tmp_path / "overwrites"
    proc = subprocess.Popen([sys.executable, "-c", _OVERWRITER, str(srcs[0]), str(srcs[1]), str(out), str(stop),
                             str(count)],
                            cwd=REPO, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened = refused = worker_refused = 0
    seen = set()
    deadline = time.monotonic() + 60
    overwrites = lambda: int(count.read_text()) if count.exists() else 0  # noqa: E731
    while proc.poll() is None and time.monotonic() < deadline and (opened < 5 or overwrites() < 4):
        try:
            r = PackedReader(out)
            got = _read_all(r)
        except PackerError as e:
            refused += 1
            assert "re-run 'packer pack'" in str(e) or "reopen the dataset" in str(e) or "no such folder" in str(e)
            continue
        fp = r.manifest["input"]["fingerprint"]
        assert [a.tolist() for a in got] == [a.tolist() for a in refs[fp]]
        opened += 1
        seen.add(fp)
        worker = pickle.loads(pickle.dumps(r))
        try:
            assert [a.tolist() for a in _read_all(worker)] == [a.tolist() for a in refs[fp]]
        except PackerError as e:
            assert "reopen the dataset" in str(e)
            worker_refused += 1
    stop.touch()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert int(stdout.split()[-1]) >= 4, stdout  # the folder was replaced while we read
    assert opened >= 5, (opened, refused)
    print(f"{opened} opens read one version ({len(seen)} seen), {refused} refused, {worker_refused} pickled copies "
          "refused")


def test_provenance_columns_are_checked_before_use(tmp_path, versions):
    """pack_sequences (per-example evaluation) returned a pack's seq_index however many entries it had."""
    from tests._verify_helpers import read_shard_rows, rewrite_shard

    out = _pack(versions[0][0], tmp_path / "out")
    rows = read_shard_rows(out, 0)
    rows[1][fmt.SEQ_INDEX] = rows[1][fmt.SEQ_INDEX][:-1] if len(rows[1][fmt.SEQ_INDEX]) > 1 else []
    sequences = load_manifest(out)[fmt.MANIFEST_SHARDS][0]["sequences"]
    rewrite_shard(out, 0, rows)  # counts the shard's sequences from seq_index: put the true count back
    rewrite_manifest(out, lambda m: m[fmt.MANIFEST_SHARDS][0].update(sequences=sequences))
    r = PackedReader(out)
    assert len(r.pack_sequences(len(r) - 1)[0]) >= 1  # another shard: fine
    with pytest.raises(PackerError, match="row 1: seq_index and cu_seqlens disagree on the number of sequences"):
        r.pack_sequences(0)


def test_a_shard_field_name_that_is_not_utf8_is_reported_by_every_reader(tmp_path, versions, capsys):
    """A flipped byte in a column name (the read-side fuzz, seeds 2 and 7): a PackerError from the reader, a schema
    defect from verify (its alignment check read the names again and raised UnicodeDecodeError)."""
    out = _pack(versions[0][0], tmp_path / "out")
    name = load_manifest(out)[fmt.MANIFEST_SHARDS][0]["file"]
    data = bytearray((out / name).read_bytes())
    at = data.index(fmt.SEQ_OFFSET.encode())
    data[at] = 0xF3  # not a UTF-8 start byte followed by 'e'
    (out / name).write_bytes(bytes(data))
    with pytest.raises(PackerError):
        PackedReader(out)
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert "schema" in captured.out and "Traceback" not in captured.err
