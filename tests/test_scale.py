"""Scale: shard jobs in worker processes and Ray tasks give the same bytes; grouped plans; staged Parquet; URIs."""
from __future__ import annotations

import builtins
import collections
import json
import logging
import tempfile

import numpy as np
import pyarrow as pa
import pytest

from packer import PackerError
from packer import format as fmt
from packer import convert, kernels
from packer.cli import main
from packer.convert import PackConfig, pack_dataset
from packer.input import Columns, formats, paths
from tests._invariants import check_packed
from tests.conftest import readable_table, write_arrow_file, write_arrow_stream, write_parquet


def _rows(table, column):
    return [np.asarray(x.values) for x in table.column(column).combine_chunks()]


@pytest.fixture
def four_files(tmp_path):
    """Four inputs of three formats and several record batches / row groups, with labels; rows i = [i] * n_i."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 90, size=400)
    lengths[[7, 300]] = [150, 0]
    parts = np.split(lengths, [90, 200, 310])
    writers = [(write_arrow_file, {"batch_rows": 17}), (write_arrow_stream, {"batch_rows": 23}),
               (write_parquet, {"row_group": 29}), (write_arrow_file, {})]
    files, tables, first = [], [], 0
    for i, (part, (w, kw)) in enumerate(zip(parts, writers)):
        t = readable_table(part, first_row=first, labels=True)
        files.append(w(tmp_path / f"in-{i}.{'parquet' if w is write_parquet else 'arrow'}", t, **kw))
        tables.append(t)
        first += len(part)
    ids = [r for t in tables for r in _rows(t, "input_ids")]
    labels = [r for t in tables for r in _rows(t, "labels")]
    return files, ids, labels


def _shards(folder):
    m = json.loads((folder / fmt.MANIFEST_FILE).read_text())
    return m, [(folder / s["file"]).read_bytes() for s in m["shards"]]


def _same_output(a, b):
    (ma, da), (mb, db) = _shards(a), _shards(b)
    ma.pop("run"), mb.pop("run")
    assert ma == mb
    assert da == db
    for name in (fmt.HF_STATE_FILE, fmt.HF_INFO_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes()


CONFIG = PackConfig(capacity=100, strategy="shuffle", seed=4, overflow="split", shard_size=6,
                    columns=Columns(labels="labels"))


def test_workers_give_the_same_bytes_as_one_process(tmp_path, four_files):
    files, ids, labels = four_files
    pack_dataset(files, tmp_path / "one", config=CONFIG, progress=False)
    m = pack_dataset(files, tmp_path / "two", config=CONFIG, progress=False, workers=2)
    assert m["run"]["workers"] == 2 and m["stats"]["packs"] > 12  # several shards per worker
    check_packed(tmp_path / "one", ids, labels, capacity=100, overflow="split")
    _same_output(tmp_path / "one", tmp_path / "two")
    # the Parquet staging folder is gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(fmt.TMP_DIR_PREFIX)]


def test_staged_parquet_gives_the_same_shards_as_arrow(tmp_path):
    table = readable_table(np.arange(1, 120) % 37 + 1, labels=True)
    a = write_arrow_file(tmp_path / "x.arrow", table)
    p = write_parquet(tmp_path / "x.parquet", table, row_group=10)
    pack_dataset(a, tmp_path / "a", config=CONFIG, progress=False)
    pack_dataset(p, tmp_path / "p", config=CONFIG, progress=False)
    assert _shards(tmp_path / "a")[1] == _shards(tmp_path / "p")[1]


def test_errors_in_workers_name_the_file_and_row(tmp_path):
    bad = write_arrow_file(tmp_path / "neg.arrow", pa.table({"input_ids": [[1, 2]] * 30 + [[3, -7]]}))
    with pytest.raises(PackerError, match=r"neg.arrow: column 'input_ids' row 30 holds -7"):
        pack_dataset(bad, tmp_path / "out", config=PackConfig(capacity=4, shard_size=2), progress=False, workers=2)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(fmt.TMP_DIR_PREFIX)]


@pytest.mark.parametrize("strategy", ["bfd", "shuffle"])
def test_grouped_plan_keeps_every_invariant_and_costs_at_most_a_pack_per_group(tmp_path, four_files, strategy):
    files, ids, labels = four_files
    config = PackConfig(capacity=100, strategy=strategy, overflow="drop", shard_size=5,
                        columns=Columns(labels="labels"), plan="grouped", group_size=2)
    m = pack_dataset(files, tmp_path / "g", config=config, progress=False)
    check_packed(tmp_path / "g", ids, labels, capacity=100, overflow="drop")
    glob = pack_dataset(files, tmp_path / "all", config=PackConfig(**{**config.__dict__, "plan": "global"}),
                        progress=False)
    s = m["stats"]
    assert m["config"]["plan"] == "grouped" and m["config"]["group_size"] == 2
    assert s["plan"] == "grouped" and s["groups"] == 2 and glob["stats"]["plan"] == "global"
    assert s["group_packs_over_lower_bound"] >= 0 and s["packs"] >= s["lower_bound_packs"]
    # a group's packs only hold that group's rows (files 0-1: rows 0-199; files 2-3: rows 200-399)
    from tests._invariants import read_packed

    _, table = read_packed(tmp_path / "g")
    for r in range(table.num_rows):
        index = np.asarray(table.column(fmt.SEQ_INDEX)[r].values)
        assert (index < 200).all() or (index >= 200).all()


@pytest.mark.parametrize("strategy", ["bfd", "mixed"])
def test_grouping_costs_at_most_one_pack_per_group_on_reference_like_data(strategy):
    from packer.jobs import make_plan
    from data_samples.synthetic import reference_like_lengths

    lengths = reference_like_lengths(39_980, seed=2, tail=20)
    file_rows = np.full(8, 5_000)
    config = PackConfig(strategy=strategy)
    _, glob, _ = make_plan(lengths, config=config, file_rows=file_rows)
    for g in (1, 3):
        segments, plan, info = make_plan(lengths, config=PackConfig(strategy=strategy, plan="grouped", group_size=g),
                                         file_rows=file_rows)
        assert info["groups"] == -(-8 // g)
        assert glob.n_packs <= plan.n_packs + 1 and plan.n_packs <= glob.n_packs + info["groups"]
        assert np.array_equal(np.sort(segments.row[plan.members]), np.sort(segments.row))


def test_uri_inputs_and_output_through_a_pyarrow_filesystem(tmp_path, four_files, monkeypatch):
    files, ids, labels = four_files
    pack_dataset(files, tmp_path / "local", config=CONFIG, progress=False)
    real = paths.filesystem

    def remote(path):  # file:// URIs, read through open_input_file instead of memory maps, like an object store
        fs, inner, _ = real(path)
        return fs, inner, False

    # the input layer's modules call paths.filesystem through the module: this one patch reaches them all
    monkeypatch.setattr(paths, "filesystem", remote)
    uris = [f"file://{f}" for f in files]
    assert not isinstance(formats.open_source(uris[0]), pa.MemoryMappedFile)  # the patch takes effect
    out = f"file://{tmp_path}/remote"
    m = pack_dataset(uris, out, config=CONFIG, progress=False)
    assert m["input"]["files"][0]["path"] == uris[0]
    (ml, dl), (mr, dr) = _shards(tmp_path / "local"), _shards(tmp_path / "remote")
    assert dl == dr and ml["shards"] == mr["shards"] and ml["stats"] == mr["stats"]
    # one writer's manifest: sealed like a local output's, and equal to it apart from the input paths and timings
    assert fmt.check_manifest_checksum(mr, tmp_path / "remote" / fmt.MANIFEST_FILE)
    same = [k for k in ml if k not in (fmt.MANIFEST_INPUT, fmt.MANIFEST_RUN, fmt.MANIFEST_CHECKSUM)]
    assert sorted(ml) == sorted(mr) and all(ml[k] == mr[k] for k in same), same
    assert ml["input"]["fingerprint"] == mr["input"]["fingerprint"]
    with pytest.raises(PackerError, match="already exists"):
        pack_dataset(uris, out, config=CONFIG, progress=False)
    # a folder URI finds its files in sorted order
    (tmp_path / "sub").mkdir()
    for f in files:
        (tmp_path / "sub" / f.name).write_bytes(f.read_bytes())
    m2 = pack_dataset(f"file://{tmp_path}/sub", f"file://{tmp_path}/again", config=CONFIG, progress=False)
    assert [f["path"] for f in m2["input"]["files"]] == [f"file://{tmp_path}/sub/{f.name}" for f in files]
    assert _shards(tmp_path / "again")[1] == dl


@pytest.mark.parametrize("output", ["local", "remote"])
def test_remote_inputs_are_read_once(tmp_path, four_files, monkeypatch, output):
    # under a global plan nearly every shard needs nearly every input batch: remote inputs are staged into a local
    # staging folder during the scan (beside a local output; in TMPDIR for a remote one), so each crosses the
    # "network" once whatever the number of shards
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    files, _, _ = four_files
    pack_dataset(files, tmp_path / "local", config=CONFIG, progress=False)
    real_fs = paths.filesystem
    def remote(p):  # file:// URIs read through pyarrow's filesystem API, like an object store
        fs, inner, local = real_fs(p)
        return fs, inner, local and "://" not in str(p)

    monkeypatch.setattr(paths, "filesystem", remote)
    monkeypatch.setattr(convert, "filesystem", remote)
    opened = collections.Counter()
    # the scan and BatchChunks open files through the module (formats.open_batches), as open_batches opens an
    # Arrow file through open_source: patched here, every opening is counted
    for name in ("open_source", "open_batches"):
        def counting(uri, *args, _real=getattr(formats, name), **kwargs):
            if str(uri).startswith("file://"):
                opened[uri] += 1
            return _real(uri, *args, **kwargs)

        monkeypatch.setattr(formats, name, counting)
    uris = [f"file://{f}" for f in files]
    out = tmp_path / "out" if output == "local" else f"file://{tmp_path}/out"
    m = pack_dataset(uris, out, config=CONFIG, progress=False)
    assert len(m["shards"]) > 10
    # the scan opens each file once (an Arrow file counts twice: open_batches opens it through open_source)
    assert sorted(opened) == sorted(uris) and max(opened.values()) <= 2, opened
    (ml, dl), (mr, dr) = _shards(tmp_path / "local"), _shards(tmp_path / "out")
    assert dl == dr and ml["shards"] == mr["shards"] and ml["stats"] == mr["stats"]
    assert not list(tmp_path.glob(f"{fmt.TMP_DIR_PREFIX}*")) and not list((tmp_path / "tmp").iterdir())


def test_one_progress_bar_counts_every_token(tmp_path, four_files, monkeypatch):
    import packer.convert as convert

    bars = []

    class Bar:
        def __init__(self, total, enabled):
            self.total, self.n = total, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def update(self, k):
            self.n += k

    monkeypatch.setattr(convert, "_progress", Bar)
    m = pack_dataset(four_files[0], tmp_path / "o", config=CONFIG, progress=True, workers=2)
    assert len(bars) == 1 and bars[0].total == bars[0].n == m["stats"]["tokens_out"]


def test_cli_workers_plan_and_summary_line(tmp_path, four_files, capsys):
    files = [str(f) for f in four_files[0]]
    assert main(["pack", *files, "-o", str(tmp_path / "o"), "--max-length", "100", "--workers", "2",
                 "--plan", "grouped", "--group-size", "3", "--shard-size", "20"]) == 0
    m = fmt.read_manifest(tmp_path / "o")
    assert m["config"]["plan"] == "grouped" and m["stats"]["groups"] == 2 and m["run"]["workers"] == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"packer: packed {m['stats']['tokens_out']:,} tokens") and "M tok/s" in err[-1]
    assert err[-1].endswith("(local engine, 2 workers)")
    assert main(["pack", *files, "-o", str(tmp_path / "x"), "--workers", "0"]) == 2
    assert "--workers 0: must be a positive number of processes" in capsys.readouterr().err  # the flag, not workers=
    assert main(["pack", *files, "-o", str(tmp_path / "x"), "--plan", "grouped", "--group-size", "0"]) == 2
    assert "group size must be a positive" in capsys.readouterr().err


def test_engine_ray_without_ray_says_how_to_install(tmp_path, four_files, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["pack", str(four_files[0][0]), "-o", str(tmp_path / "o"), "--engine", "ray"]) == 2
    assert "pip install 'packer-llm[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")  # a safety net only: CI installs ray (requirements-dev.txt)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_same_bytes_and_reports_errors(tmp_path, four_files, ray_local):
    files, ids, labels = four_files
    pack_dataset(files, tmp_path / "local", config=CONFIG, progress=False)
    m = pack_dataset(files, tmp_path / "ray", config=CONFIG, progress=False, engine="ray")
    assert m["run"]["engine"] == "ray" and m["run"]["workers"] == 2
    _same_output(tmp_path / "local", tmp_path / "ray")
    assert ray_local.is_initialized()  # an instance packer did not start is left running
    bad = write_arrow_file(tmp_path / "neg.arrow", pa.table({"input_ids": [[1, 2]] * 30 + [[3, -7]]}))
    with pytest.raises(PackerError, match=r"neg.arrow: column 'input_ids' row 30 holds -7"):
        pack_dataset(bad, tmp_path / "out", config=PackConfig(capacity=4, shard_size=2), progress=False,
                     engine="ray")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", range(5))
def test_sorted_desc_lengths_is_the_gather_through_sort_desc(seed):
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(1, 300))
    lengths = rng.integers(1, cap + 1, size=int(rng.integers(0, 500))).astype(np.int32)
    got = kernels.sorted_desc_lengths(lengths, cap)
    assert got.dtype == np.int32
    assert np.array_equal(got, lengths[kernels.sort_desc(lengths, cap)])
