"""Hostile and broken input: always a clear PackerError (CLI exit 2), never a traceback, hang, crash or wrong output."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from packer.cli import main
from packer.verify import verify_packed
from tests._verify_helpers import rows_table, write_file, write_parquet, write_stream

REPO = Path(__file__).resolve().parents[1]
FUZZ_CASES = 240
FUZZ_SEED = 0


def _refused(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("packer: error:") and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def test_empty_file(tmp_path, capsys):
    (tmp_path / "in.arrow").write_bytes(b"")
    _refused(capsys, ["pack", str(tmp_path / "in.arrow"), "-o", str(tmp_path / "out")], "in.arrow", "empty")


def test_zero_row_file_next_to_others_is_fine(tmp_path, capsys):
    write_stream(rows_table([]), tmp_path / "a.arrow")
    write_parquet(rows_table([3, 4]), tmp_path / "b.parquet")
    assert main(["pack", str(tmp_path / "a.arrow"), str(tmp_path / "b.parquet"), "-o", str(tmp_path / "out")]) == 0
    assert verify_packed(tmp_path / "out", inputs=[tmp_path / "a.arrow", tmp_path / "b.parquet"]).ok


def test_stream_cut_at_a_batch_boundary_is_refused(tmp_path, capsys):
    """Without its end-of-stream marker, a stream missing its last batches would silently lose rows."""
    path = write_stream(rows_table([5] * 10), tmp_path / "in.arrow", max_chunksize=5)
    data = path.read_bytes()
    path.write_bytes(data[:-8])  # drop only the end-of-stream marker
    _refused(capsys, ["pack", str(path), "-o", str(tmp_path / "out")], "in.arrow", "end-of-stream marker")
    buf = pa.py_buffer(data[:-8])
    assert pa.ipc.open_stream(buf).read_all().num_rows == 10  # pyarrow alone reads it without complaint


def test_corrupted_list_offsets_are_refused(tmp_path, capsys):
    """An offset pointing past the values would send the gather kernel outside the memory map."""
    path = write_file(rows_table([4, 4, 4]), tmp_path / "in.arrow")
    data = bytearray(path.read_bytes())
    offsets = np.array([0, 4, 8, 12], dtype=np.int32).tobytes()
    at = data.find(offsets)
    assert at > 0
    data[at + 8 : at + 12] = np.array([1 << 20], dtype=np.int32).tobytes()
    path.write_bytes(bytes(data))
    _refused(capsys, ["pack", str(path), "-o", str(tmp_path / "out")], "in.arrow", "truncated or corrupted")


@pytest.mark.parametrize("state", ["{not json", '{"_data_files": [{"filename": "gone.arrow"}]}', "[]"])
def test_broken_datasets_folder(tmp_path, capsys, state):
    d = tmp_path / "ds"
    d.mkdir()
    write_stream(rows_table([3]), d / "data-00000-of-00001.arrow")
    (d / "state.json").write_text(state)
    _refused(capsys, ["pack", str(d), "-o", str(tmp_path / "out")], "ds")


def test_folder_without_data_and_not_a_tokenized_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _refused(capsys, ["pack", str(tmp_path / "empty"), "-o", str(tmp_path / "out")], "no .arrow or .parquet")
    (tmp_path / "notes.txt").write_text("hello")
    _refused(capsys, ["pack", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "out")], "notes.txt")


@pytest.mark.parametrize("opts,fragment", [
    (["--max-length", "0"], "capacity must be positive"),
    (["--max-length", "-3"], "capacity must be positive"),
    (["--max-length", str(2**40)], "more than packer supports"),
    (["--shard-size", "0"], "shard size must be a positive"),
    (["--seed", "-1"], "seed must be a non-negative"),
])
def test_absurd_options(tmp_path, capsys, opts, fragment):
    src = write_stream(rows_table([3, 4]), tmp_path / "in.arrow")
    _refused(capsys, ["pack", str(src), "-o", str(tmp_path / "out")] + opts, fragment)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_not_replaced(tmp_path, capsys):
    src = write_stream(rows_table([3, 4]), tmp_path / "in.arrow")
    (tmp_path / "out").write_text("precious")
    _refused(capsys, ["pack", str(src), "-o", str(tmp_path / "out"), "--overwrite"], "not a folder")
    assert (tmp_path / "out").read_text() == "precious"


def test_seeded_fuzz(tmp_path):
    """FUZZ_CASES seeded cases (malformed schemas, nulls, out-of-range ids, absurd options, truncated, bit-flipped,
    overwritten, zeroed and extended Arrow/Parquet files, damaged packed folders), run in a subprocess so that a
    crash or a hang of the interpreter fails the test and names its case."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_fuzz_worker.py"), "--seed", str(FUZZ_SEED), "--cases",
         str(FUZZ_CASES), "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    results = [r for r in lines if "outcome" in r]
    last = lines[-1] if lines else None
    assert proc.returncode == 0, f"worker died (exit {proc.returncode}) in case {last}: {proc.stderr[-3000:]}"
    assert len(results) == FUZZ_CASES
    bad = [r for r in results if r["outcome"] not in ("ok", "error", "detected")]
    assert not bad, json.dumps(bad[:3], indent=1)
    outcomes = collections.Counter(r["outcome"] for r in results)
    # every kind of outcome happens: the fuzz exercises refusals, successes and damage detection
    assert outcomes["ok"] > 0 and outcomes["error"] > 0 and outcomes["detected"] > 0, outcomes
