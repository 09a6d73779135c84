"""The one input layer (packer.input): every way of reading an input sees the same rows, and every command that
reads input refuses bad input with the same message."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from packer.cli import main
from packer.errors import PackerError
from packer.input import Columns, open_input, scan_inputs
from tests.conftest import readable_table, write_arrow_file, write_arrow_stream, write_parquet

LENGTHS = [3, 0, 5, 1, 7, 2, 4, 6, 2, 3, 1]


def _write(kind, path, table):
    if kind == "arrow-file":
        return write_arrow_file(path.with_suffix(".arrow"), table, batch_rows=3)
    if kind == "arrow-stream":
        return write_arrow_stream(path.with_suffix(".arrow"), table, batch_rows=3)
    return write_parquet(path.with_suffix(".parquet"), table, row_group=4)


def _rows(inp, order):
    """(row, ids, labels) of every row, reading the chunks in ``order`` (a slow reference walk)."""
    starts = inp.chunk_row_starts()
    out = {}
    for c in order:
        chunk = inp.chunks[c]
        for r in range(starts[c], starts[c + 1]):
            a, b = chunk.offsets[r - chunk.row_start], chunk.offsets[r - chunk.row_start + 1]
            out[r] = (chunk.ids[a:b].tolist(), chunk.labels[a:b].tolist())
    return out


@pytest.mark.parametrize("kind", ["arrow-file", "arrow-stream", "parquet"])
def test_scanned_kept_and_staged_batches_hold_the_same_rows(tmp_path, kind):
    tables = [readable_table(LENGTHS, labels=True), readable_table(LENGTHS[::-1], first_row=len(LENGTHS), labels=True)]
    files = [_write(kind, tmp_path / f"part-{i}", t) for i, t in enumerate(tables)]
    want = {}
    for t in tables:
        for row in t.to_pylist():
            want[len(want)] = (row["input_ids"], row["labels"])
    columns = Columns(labels="labels")
    lazy = scan_inputs(files, columns=columns)
    staged = scan_inputs(files, columns=columns, staging=str(tmp_path / "stage"))
    kept = open_input(files, columns=columns)
    assert (kind == "parquet") == (staged.staging is not None)
    for inp in (lazy, staged, kept):
        assert inp.n_rows == len(want) and inp.file_rows.tolist() == [len(LENGTHS)] * 2
        np.testing.assert_array_equal(inp.lengths, [len(ids) for ids, _ in want.values()])
        np.testing.assert_array_equal(inp.batches, lazy.batches)
        assert inp.batches.shape[0] > 4  # several batches (or row groups) per file
        n = len(inp.chunks)
        # backwards too: streams and Parquet only go forward, so this reopens them
        for order in (range(n), range(n - 1, -1, -1), np.random.default_rng(0).permutation(n)):
            assert _rows(inp, order) == want
        assert inp.locate(len(LENGTHS) + 2) == (str(files[1]), 2)


def _error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", ["null token", "null row", "not a list", "truncated", "empty"])
def test_pack_report_and_verify_refuse_bad_input_with_one_message(tmp_path, capsys, case):
    good = write_arrow_file(tmp_path / "good.arrow", readable_table([3, 4, 5]))
    assert main(["-q", "pack", str(good), "-o", str(tmp_path / "packed"), "--max-length", "8"]) == 0
    bad = tmp_path / "bad.arrow"
    if case == "null token":
        write_arrow_file(bad, pa.table({"input_ids": [[1, 2], [3, None]]}))
    elif case == "null row":
        write_arrow_file(bad, pa.table({"input_ids": [[1, 2], None]}))
    elif case == "not a list":
        write_arrow_file(bad, pa.table({"input_ids": ["a b", "c"]}))
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:-40])
    else:
        bad.write_bytes(b"")
    pack = _error(capsys, ["pack", str(bad), "-o", str(tmp_path / "out"), "--no-labels"])
    report = _error(capsys, ["report", str(bad)])
    assert pack.startswith("packer: error: ") and "bad.arrow" in pack
    assert report == pack
    with pytest.raises(PackerError) as e:
        open_input([bad])
    assert pack == f"packer: error: {e.value}"
    # verify --input reports it as the input defect, with the same words
    assert main(["verify", str(tmp_path / "packed"), "--input", str(bad)]) != 0
    assert str(e.value) in capsys.readouterr().out
