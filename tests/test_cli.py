"""The packer command line end to end: `packer pack` / `packer stats` on real files, and every bad input."""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from packer import format as fmt
from packer.cli import main
from tests._invariants import check_packed
from tests.conftest import REPO, readable_table, write_arrow_file, write_parquet


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "packer", *map(str, argv)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_pack_and_stats_on_data_samples(tmp_path, samples_dir):
    out = tmp_path / "packed"
    r = run_cli("pack", samples_dir, "--output", out, "--shard-size", "10")
    assert r.returncode == 0, r.stderr
    assert "packing efficiency" in r.stdout and "lower bound" in r.stdout
    m = fmt.read_manifest(out)
    assert m["config"]["columns"]["labels"] == "labels"  # auto-detected
    assert m["stats"]["sequences_dropped"] == 3  # the sample's three rows past 20,000 tokens
    import datasets

    src = datasets.load_from_disk(str(samples_dir))
    check_packed(out, [np.asarray(x) for x in src["input_ids"]], [np.asarray(x) for x in src["labels"]],
                 capacity=20_000, overflow="drop")
    r = run_cli("stats", out)
    assert r.returncode == 0 and "packing efficiency" in r.stdout
    r = run_cli("stats", out, "--json")
    assert json.loads(r.stdout) == m["stats"]


def test_python_m_and_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "pack" in r.stdout and "stats" in r.stdout
    r = run_cli("pack", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--overflow" in r.stdout


def test_cli_options_reach_the_config(tmp_path, samples_dir):
    out = tmp_path / "packed"
    code = main(["-q", "pack", str(samples_dir), "-o", str(out), "--max-length", "4096", "--strategy", "mixed",
                 "--overflow", "split", "--seed", "9", "--filler", "0.3", "--no-labels"])
    assert code == 0
    cfg = fmt.read_manifest(out)["config"]
    assert (cfg["capacity"], cfg["strategy"], cfg["overflow"], cfg["seed"], cfg["filler"]) == (
        4096, "mixed", "split", 9, 0.3)
    assert cfg["columns"]["labels"] is None


def _no_output_left(parent, name="out"):
    return not (parent / name).exists() and not list(parent.glob(fmt.TMP_DIR_PREFIX + "*"))


@pytest.fixture
def good(tmp_path):
    return write_arrow_file(tmp_path / "good.arrow", readable_table([3, 4, 5]))


def bad_inputs(tmp_path):
    """(name, argv after 'pack', expected words in the message)."""
    cases = []
    cases.append(("missing path", [tmp_path / "nope.arrow"], ["nope.arrow", "no such file"]))
    f = write_arrow_file(tmp_path / "cols.arrow", readable_table([3, 4]))
    cases.append(("no such column", [f, "--input-column", "tokens"], ["cols.arrow", "no column 'tokens'",
                                                                       "--input-column"]))
    f = write_arrow_file(tmp_path / "str.arrow", pa.table({"input_ids": ["a b", "c"]}))
    cases.append(("strings", [f], ["str.arrow", "'input_ids' holds text", "token ids", "docs/input.md"]))
    f = write_parquet(tmp_path / "float.parquet", pa.table({"input_ids": [[1.0, 2.0], [3.0]]}))
    cases.append(("floats", [f], ["float.parquet", "items must be integers"]))
    f = write_arrow_file(tmp_path / "null.arrow", pa.table({"input_ids": [[1, 2], None, [3]]}))
    cases.append(("null row", [f], ["null.arrow", "row 1 is null"]))
    f = write_arrow_file(tmp_path / "nullitem.arrow", pa.table({"input_ids": [[1, 2], [3, None]]}))
    cases.append(("null token", [f], ["nullitem.arrow", "row 1 holds a null token"]))
    t = readable_table([3, 4]).append_column("labels", pa.array([[1, 2, 3], [1, 2]], pa.list_(pa.int32())))
    f = write_arrow_file(tmp_path / "lab.arrow", t)
    cases.append(("labels length", [f], ["lab.arrow", "row 1 has 4 input_ids but 2 labels"]))
    t = readable_table([3, 2]).append_column("labels", pa.array([[1, -100, 3], [4, -5]], pa.list_(pa.int32())))
    f = write_arrow_file(tmp_path / "badlab.arrow", t)
    cases.append(("negative label", [f], ["badlab.arrow", "'labels' row 1 holds -5", "use -100"]))
    f = write_arrow_file(tmp_path / "neg.arrow", pa.table({"input_ids": [[1, 2], [3, -7]]}))
    cases.append(("negative id", [f], ["neg.arrow", "row 1 holds -7"]))
    f = write_arrow_file(tmp_path / "big.arrow", pa.table({"input_ids": pa.array([[1, 2**40]], pa.list_(pa.int64()))}))
    cases.append(("id past int32", [f], ["big.arrow", "row 0 holds 1099511627776"]))
    good = write_arrow_file(tmp_path / "ok.arrow", readable_table([3, 4]))
    cases.append(("capacity 0", [good, "--max-length", "0"], ["--max-length 0: capacity must be positive"]))
    cases.append(("capacity negative", [good, "--max-length", "-5"], ["--max-length -5: capacity must be positive"]))
    cases.append(("shard size 0", [good, "--shard-size", "0"], ["--shard-size 0: shard size must be a positive"]))
    data = (tmp_path / "ok.arrow").read_bytes()
    (tmp_path / "trunc.arrow").write_bytes(data[: len(data) // 2])
    cases.append(("truncated arrow", [tmp_path / "trunc.arrow"], ["trunc.arrow", "truncated or corrupted"]))
    pq_data = write_parquet(tmp_path / "ok.parquet", readable_table([3, 4])).read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(pq_data[:-20])
    cases.append(("truncated parquet", [tmp_path / "trunc.parquet"], ["trunc.parquet", "truncated or corrupted"]))
    (tmp_path / "empty.arrow").write_bytes(b"")
    cases.append(("empty file", [tmp_path / "empty.arrow"], ["empty.arrow", "the file is empty"]))
    (tmp_path / "junk.arrow").write_bytes(b"hello world, not arrow at all" * 10)
    cases.append(("junk", [tmp_path / "junk.arrow"], ["junk.arrow"]))
    cases.append(("all empty", [write_arrow_file(tmp_path / "e.arrow", readable_table([0, 0]))], ["no tokens"]))
    return cases


def test_every_bad_input_gets_a_one_line_error_and_leaves_nothing(tmp_path, capsys):
    cases = bad_inputs(tmp_path)
    for name, args, words in cases:
        out = tmp_path / "out"
        code = main(["pack", *map(str, args), "--output", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and err[0].startswith("packer: error: "), (name, err)
        for w in words:
            assert w in err[0], (name, w, err[0])
        assert _no_output_left(tmp_path), name


def test_existing_output_is_refused_then_overwritten(tmp_path, good, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["pack", str(good), "-o", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    # a folder of someone's files is never replaced, even with --overwrite
    assert main(["pack", str(good), "-o", str(out), "--overwrite"]) == 2
    assert "is not a packed folder" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(["pack", str(good), "-o", str(out), "--overwrite"]) == 0  # an empty folder is fine
    assert main(["pack", str(good), "-o", str(out), "--overwrite", "--max-length", "6"]) == 0  # a packed one too
    assert fmt.read_manifest(out)["config"]["capacity"] == 6


def test_datasetdict_folder_names_the_splits(tmp_path, capsys):
    import datasets

    d = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [[1, 2]]})})
    d.save_to_disk(str(tmp_path / "dd"))
    assert main(["pack", str(tmp_path / "dd"), "-o", str(tmp_path / "out")]) == 2
    assert "pass one split folder instead (one of: train)" in capsys.readouterr().err


def test_glob_and_folder_inputs(tmp_path, capsys):
    for i in range(3):
        write_parquet(tmp_path / f"part-{i}.parquet", readable_table([2, 3], first_row=2 * i))
    assert main(["-q", "pack", str(tmp_path / "part-*.parquet"), "-o", str(tmp_path / "a"), "--max-length", "8"]) == 0
    assert main(["-q", "pack", str(tmp_path), "-o", str(tmp_path / "b"), "--max-length", "8"]) == 0
    rows = [np.full(n, i) for i, n in enumerate([2, 3] * 3)]
    for out in ("a", "b"):
        check_packed(tmp_path / out, rows, None, capacity=8, overflow="drop")
    assert main(["pack", str(tmp_path / "zzz*.parquet"), "-o", str(tmp_path / "c")]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_verbosity_flags_before_or_after_the_subcommand():
    from packer.cli import build_parser

    parser = build_parser()
    for argv, quiet, verbose in ((["-q", "stats", "p"], True, False), (["stats", "-q", "p"], True, False),
                                 (["stats", "p", "--verbose"], False, True), (["stats", "p"], False, False)):
        args = parser.parse_args(argv)
        assert (args.quiet, args.verbose) == (quiet, verbose), argv
    r = run_cli("-q", "stats", "nowhere", "-v")
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_quiet_pack_and_verify_print_nothing_when_all_is_well(tmp_path, samples_dir):
    out = tmp_path / "packed"
    r = run_cli("pack", samples_dir, "-o", tmp_path / "dropped", "-q")  # the sample's 3 long rows are dropped
    assert r.returncode == 0 and r.stdout == "" and "loses 11.5% of the input's tokens" in r.stderr  # still said
    r = run_cli("pack", samples_dir, "-o", out, "-q", "--overflow", "split")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    r = run_cli("verify", out, "-q")
    assert r.returncode == 0 and r.stdout == ""
    (out / fmt.MANIFEST_FILE).write_text((out / fmt.MANIFEST_FILE).read_text().replace('"capacity": 20000',
                                                                                         '"capacity": 20001'))
    r = run_cli("verify", out, "-q")
    assert r.returncode == 1 and "FAIL" in r.stdout  # a defect is always reported
