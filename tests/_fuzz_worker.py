"""Seeded fuzz cases for hostile input, run in a subprocess by tests/test_hostile_input.py.

    python tests/_fuzz_worker.py --seed 0 --cases 300 --workdir /tmp/fuzz

Each case writes one input file (a malformed schema, nulls, out-of-range ids, absurd options, or a valid file that
is then truncated, bit-flipped or overwritten), runs ``packer pack`` through ``packer.cli.main`` in this process
and classifies the outcome; it prints one JSON line per case:

* ``error``: exit 2 with a ``packer: error:`` message (a clear refusal);
* ``ok``: exit 0, and the output verifies against the input AND matches what pyarrow alone reads from the file
  (fully validated, as Python lists), and for a truncated file what the original held;
* ``detected`` (every fourth case): a valid packed folder was damaged (shard bytes flipped, truncated, zeroed,
  deleted or extended; a manifest value changed or deleted and the manifest re-sealed, so that verify's
  cross-checks must find it; a manifest value changed without re-sealing, which the manifest checksum must
  find without the input; the manifest's bytes cut; state.json emptied) and ``verify_packed`` reported it, with
  and without the input, without raising;
* ``wrong`` (output that does not match, or damage verify missed), ``traceback`` (any other exception, or an error without a message):
  failures.

A ``start`` line precedes each case, so a hang or an interpreter crash names the case it happened in.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packer import format as fmt  # noqa: E402
from packer.cli import main  # noqa: E402
from packer.verify import verify_packed  # noqa: E402
from tests._verify_helpers import (  # noqa: E402
    reference_rows,
    rows_table,
    unpack_rows,
    write_file,
    write_parquet,
    write_stream,
)

INT32_MAX = 2**31 - 1


def _ids(rng, n_rows, max_len=30):
    lengths = rng.integers(0, max_len, n_rows)
    return [[int(x) for x in rng.integers(0, 1000, n)] for n in lengths]


SCHEMA_CASES = {
    # name: builds the input_ids column (or the whole table) from rng; value = whether packing may succeed
    "list<string>": lambda r: pa.array([[str(x) for x in row] for row in _ids(r, 5)], pa.list_(pa.string())),
    "list<float32>": lambda r: pa.array(_ids(r, 5), pa.list_(pa.float32())),
    "list<float64>": lambda r: pa.array([[x + 0.5 for x in row] for row in _ids(r, 5)], pa.list_(pa.float64())),
    "string": lambda r: pa.array(["a b c"] * 5),
    "int64 scalar": lambda r: pa.array(r.integers(0, 9, 5), pa.int64()),
    "list<list<int32>>": lambda r: pa.array([[row] for row in _ids(r, 5)], pa.list_(pa.list_(pa.int32()))),
    "struct": lambda r: pa.array([{"a": 1, "b": [1, 2]}] * 5),
    "list<struct>": lambda r: pa.array([[{"a": 1}]] * 5),
    "fixed_size_list": lambda r: pa.array([[1, 2, 3]] * 5, pa.list_(pa.int32(), 3)),
    "list<bool>": lambda r: pa.array([[True, False]] * 5, pa.list_(pa.bool_())),
    "map": lambda r: pa.array([[(1, 2)]] * 5, pa.map_(pa.int32(), pa.int32())),
    "list<null>": lambda r: pa.array([[None, None]] * 5, pa.list_(pa.null())),
    "binary": lambda r: pa.array([b"\x00\x01"] * 5),
    "list<dictionary>": lambda r: pa.ListArray.from_arrays(
        pa.array([0, 2, 4], pa.int32()), pa.array([1, 2, 1, 3]).dictionary_encode()),
    "null rows": lambda r: pa.array([[1, 2], None, [3]], pa.list_(pa.int32())),
    "null items": lambda r: pa.array([[1, 2], [3, None, 4]], pa.list_(pa.int32())),
    "all null": lambda r: pa.array([None, None], pa.list_(pa.int32())),
    "negative ids": lambda r: pa.array([[1, 2], [3, -4]], pa.list_(pa.int32())),
    "int8 negative": lambda r: pa.array([[1, -1]], pa.list_(pa.int8())),
    "uint32 >= 2**31": lambda r: pa.array([[1, 2**31]], pa.list_(pa.uint32())),
    "uint64 > 2**32": lambda r: pa.array([[1, 2**32 + 5]], pa.list_(pa.uint64())),
    "uint64 > 2**63": lambda r: pa.array([[2**64 - 3, 7]], pa.list_(pa.uint64())),
    "int64 >= 2**31": lambda r: pa.array([[5, 2**31]], pa.list_(pa.int64())),
    "int64 min": lambda r: pa.array([[5, -(2**63)]], pa.list_(pa.int64())),
    "all empty rows": lambda r: pa.array([[], [], []], pa.list_(pa.int32())),
    "zero rows": lambda r: pa.array([], pa.list_(pa.int32())),
    # valid ones: these must pack
    "valid int8": lambda r: pa.array(_ids(r, 6, 20), pa.list_(pa.int16())),
    "valid uint16": lambda r: pa.array(_ids(r, 6), pa.list_(pa.uint16())),
    "valid uint64": lambda r: pa.array(_ids(r, 6), pa.list_(pa.uint64())),
    "valid int64 near max": lambda r: pa.array([[INT32_MAX, 0, 1]], pa.list_(pa.int64())),
    "valid large_list": lambda r: pa.array(_ids(r, 6), pa.large_list(pa.int32())),
    "valid sliced": lambda r: pa.array(_ids(r, 12), pa.list_(pa.int32())).slice(3, 6),
}
LABEL_CASES = {
    "labels below -100": lambda ids: [[-101 if j == 0 else t for j, t in enumerate(row)] for row in ids],
    "labels length mismatch": lambda ids: [row + [1] for row in ids],
    "labels null item": lambda ids: [[None] + row[1:] if row else row for row in ids],
    "labels null row": lambda ids: [None] + ids[1:],
    "labels float": "float",
    "labels valid": lambda ids: [[-100 if j % 2 else t for j, t in enumerate(row)] for row in ids],
}
MASK_CASES = {
    "mask value 2": lambda ids: [[2 for _ in row] for row in ids],
    "mask negative": lambda ids: [[-1 for _ in row] for row in ids],
    "mask valid bool": lambda ids: [[bool(j % 2) for j in range(len(row))] for row in ids],
    "mask valid int": lambda ids: [[j % 2 for j in range(len(row))] for row in ids],
}
OPTION_CASES = [
    ["--max-length", "0"], ["--max-length", "-5"], ["--max-length", str(2**40)], ["--max-length", "1"],
    ["--max-length", "abc"], ["--shard-size", "0"], ["--shard-size", "-1"], ["--shard-size", str(10**15)],
    ["--seed", "-1"], ["--seed", str(2**70)], ["--overflow", "explode"], ["--strategy", "magic"],
    ["--filler", "1.5"], ["--filler", "nan"], ["--filler", "-0.1"], ["--input-column", "nope"],
    ["--labels-column", "nope"], ["--loss-mask-column", "nope"], [],
]
CORRUPTIONS = ("truncate", "flip", "overwrite", "zero", "append")


def _write(table: pa.Table, path: Path, kind: str) -> None:
    {"stream": write_stream, "file": write_file, "parquet": write_parquet}[kind](table, path)


def _expected_ok(ref_cols, names_cfg, capacity, overflow, packed) -> str | None:
    """Compare the packed pieces with pyarrow's reading; return what differs, or None."""
    ids_rows = ref_cols[0]
    other = ref_cols[1] if len(ref_cols) > 1 else None
    for i, row in enumerate(ids_rows):
        if other is not None and (other[i] is None or len(other[i]) != len(row)):
            return f"row {i}: label column length differs but packing succeeded"
        if names_cfg == "labels":
            want_lab = list(other[i])
        elif names_cfg == "mask":
            want_lab = [t if m else fmt.IGNORE_INDEX for t, m in zip(row, other[i])]
        else:
            want_lab = list(row)
        pieces = sorted(packed.get(i, []))
        n = len(row)
        if n == 0 or (n > capacity and overflow == "drop"):
            if pieces:
                return f"row {i} should not be packed"
            continue
        keep = n if overflow == "split" else min(n, capacity)
        # only the packed part of a row is read: a dropped row's or a truncated tail's ids are never looked at
        if any((t is None or t < 0 or t > INT32_MAX) for t in row[:keep]):
            return f"row {i} holds an id outside int32 but packing succeeded"
        got_ids = [t for _, ids, _ in pieces for t in ids]
        got_lab = [t for _, _, lab in pieces for t in lab]
        starts = [off for off, _, _ in pieces]
        want_l = list(want_lab[:keep])
        for s in starts:
            want_l[s] = fmt.IGNORE_INDEX
        if got_ids != list(row[:keep]):
            return f"row {i}: packed tokens differ from pyarrow's reading"
        if got_lab != want_l:
            return f"row {i}: packed labels differ from pyarrow's reading"
    extra = set(packed) - set(range(len(ids_rows)))
    if extra:
        return f"packed rows {sorted(extra)[:5]} do not exist"
    return None


def run_case(i: int, rng: np.random.Generator, work: Path) -> dict:
    case_dir = work / f"case{i}"
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    kind = ["stream", "file", "parquet"][int(rng.integers(3))]
    path = case_dir / ("in.parquet" if kind == "parquet" else "in.arrow")
    out = case_dir / "out"
    family = ["schema", "labels", "mask", "options", "corrupt", "corrupt"][int(rng.integers(6))]
    args: list[str] = []
    names = ["input_ids"]
    original = None
    capacity, overflow = 50, ["drop", "truncate", "split"][int(rng.integers(3))]
    if family == "schema":
        name = list(SCHEMA_CASES)[int(rng.integers(len(SCHEMA_CASES)))]
        table = pa.table({"input_ids": SCHEMA_CASES[name](rng)})
    elif family in ("labels", "mask"):
        cases = LABEL_CASES if family == "labels" else MASK_CASES
        name = list(cases)[int(rng.integers(len(cases)))]
        ids = _ids(rng, 6)
        build = cases[name]
        col_name = "labels" if family == "labels" else "loss_mask"
        if build == "float":
            other = pa.array([[float(t) for t in row] for row in ids], pa.list_(pa.float32()))
        else:
            vals = build(ids)
            typ = pa.list_(pa.bool_()) if "bool" in name else pa.list_(pa.int32())
            other = pa.array(vals, typ)
        table = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), col_name: other})
        names.append(col_name)
        args += ["--labels-column", col_name] if family == "labels" else ["--loss-mask-column", col_name]
    elif family == "options":
        opts = OPTION_CASES[int(rng.integers(len(OPTION_CASES)))]
        name = "options " + " ".join(opts)
        table = rows_table(rng.integers(0, 80, 8).tolist())
        args += opts
        if "--max-length" in opts:
            v = opts[opts.index("--max-length") + 1]
            capacity = int(v) if v.lstrip("-").isdigit() else capacity
        for col_opt in ("--labels-column", "--loss-mask-column"):
            if col_opt in opts:
                names.append(opts[opts.index(col_opt) + 1])
        if "--overflow" in opts:
            overflow = opts[opts.index("--overflow") + 1]
    else:
        with_labels = bool(rng.integers(2))
        table = rows_table(rng.integers(0, 80, int(rng.integers(1, 40))).tolist(), labels=with_labels)
        if with_labels:
            names.append("labels")
            args += ["--labels-column", "labels"]
        else:
            args += ["--no-labels"]
        how = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        name = f"corrupt {kind} {how}"
    if family != "options" and "--max-length" not in args:
        args += ["--max-length", str(capacity)]
    if "--overflow" not in args:
        args += ["--overflow", overflow]
    if family not in ("labels", "mask", "corrupt") and not any(a in args for a in (
            "--labels-column", "--loss-mask-column")):
        args += ["--no-labels"]
    if "--shard-size" not in args:
        args += ["--shard-size", str(int(rng.integers(1, 4)))]
    _write(table, path, kind)
    if family == "corrupt":
        data = bytearray(path.read_bytes())
        original = reference_rows(path, kind, names)
        how = name.split()[-1]
        if how == "truncate":
            data = data[: int(rng.integers(0, len(data)))]
        elif how == "flip":
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif how == "overwrite":
            at = int(rng.integers(len(data)))
            data[at : at + 8] = rng.integers(0, 256, len(data[at : at + 8]), dtype=np.uint8).tobytes()
        elif how == "zero":
            at = int(rng.integers(len(data)))
            n = int(rng.integers(1, 64))
            data[at : at + n] = bytes(len(data[at : at + n]))
        else:
            data += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))

    argv = ["pack", str(path), "-o", str(out)] + args
    result = {"case": i, "name": name, "argv": " ".join(argv[3:])}
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as e:  # argparse rejects malformed options with exit 2 and a usage message
        rc = e.code
    except BaseException:  # noqa: BLE001
        result.update(outcome="traceback", detail=traceback.format_exc()[-2000:])
        return result
    message = err.getvalue().strip().splitlines()
    if rc == 2:
        ok_msg = any(line.startswith("packer: error:") or "error:" in line for line in message)
        result.update(outcome="error" if ok_msg else "traceback", detail=message[-1] if message else "")
        return result
    if rc != 0:
        result.update(outcome="traceback", detail=f"exit {rc}: {message[-1:]}")
        return result
    # success: the output must verify and match pyarrow's own reading of the file
    report = verify_packed(out, inputs=[path])
    if not report.ok:
        result.update(outcome="wrong", detail=report.format()[-1500:])
        return result
    manifest = fmt.read_manifest(out)
    cfg = manifest["config"]
    cols = cfg["columns"]
    ref_names = [cols["input_ids"]] + [c for c in (cols["labels"], cols["loss_mask"]) if c]
    mode = "labels" if cols["labels"] else "mask" if cols["loss_mask"] else "ids"
    ref = reference_rows(path, kind, ref_names)
    if ref is None:
        result.update(outcome="wrong", detail="packed a file that pyarrow alone cannot read")
        return result
    diff = _expected_ok(ref, mode, cfg["capacity"], cfg["overflow"], unpack_rows(out))
    if diff is None and family == "corrupt" and name.endswith("truncate") and ref != original:
        diff = "a truncated file packed into less than the original held"
    result.update(outcome="wrong" if diff else "ok", detail=diff or "")
    shutil.rmtree(case_dir, ignore_errors=True)
    return result


MANIFEST_TARGETS = [
    ("format",), ("format_version",), ("config",), ("config", "capacity"), ("config", "overflow"),
    ("config", "columns"), ("config", "columns", "input_ids"), ("shards",), ("shards", 0), ("shards", 0, "file"),
    ("shards", 0, "rows"), ("shards", 0, "tokens"), ("shards", 0, "sequences"), ("shards", 0, "bytes"),
    ("shards", 0, "xxh3_128"), ("shards", -1, "xxh3_128"), ("stats",), ("stats", "packs"), ("stats", "sequences_out"),
    ("stats", "tokens_out"), ("stats", "tokens_in"), ("stats", "sequences_in"), ("stats", "sequences_dropped"),
    ("stats", "tokens_dropped"), ("stats", "empty_sequences_skipped"), ("stats", "label_tokens"),
    ("input", "rows"), ("input", "fingerprint"),
]
# fields only the manifest checksum protects (verify does not interpret them), for "manifest unsealed"
UNSEALED_TARGETS = MANIFEST_TARGETS + [
    ("packer_version",), ("config", "seed"), ("config", "strategy"), ("input", "files", 0, "path"),
    ("input", "files", 0, "bytes"), ("input", "tokens"), ("stats", "packing_efficiency"),
]
VERIFY_DAMAGE = ("shard flip", "shard truncate", "shard zero", "shard delete", "shard append", "manifest value",
                 "manifest delete", "manifest unsealed", "manifest bytes", "state.json")


def run_verify_case(i: int, rng: np.random.Generator, work: Path) -> dict:
    """Pack a valid input, damage the packed folder, and require both verify runs to report it, never raise."""
    case_dir = work / f"vcase{i}"
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    path = write_stream(rows_table(rng.integers(0, 60, int(rng.integers(2, 30))).tolist(),
                                   labels=bool(rng.integers(2))), case_dir / "in.arrow")
    out = case_dir / "out"
    overflow = ["drop", "truncate", "split"][int(rng.integers(3))]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["pack", str(path), "-o", str(out), "--max-length", "40", "--shard-size", "2",
                   "--overflow", overflow])
    if rc != 0:
        return {"case": i, "name": "verify setup", "outcome": "error", "detail": "packing the valid input failed"}
    how = VERIFY_DAMAGE[int(rng.integers(len(VERIFY_DAMAGE)))]
    manifest_path = out / fmt.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    shard = out / manifest["shards"][int(rng.integers(len(manifest["shards"])))]["file"]
    data = bytearray(shard.read_bytes())
    name = f"verify {how}"
    if how == "shard flip":
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        shard.write_bytes(bytes(data))
    elif how == "shard truncate":
        shard.write_bytes(bytes(data[: int(rng.integers(len(data)))]))
    elif how == "shard zero":
        at = int(rng.integers(len(data)))
        data[at : at + 16] = bytes(len(data[at : at + 16]))
        if bytes(data) == shard.read_bytes():
            data[at] ^= 1
        shard.write_bytes(bytes(data))
    elif how == "shard delete":
        shard.unlink()
    elif how == "shard append":
        shard.write_bytes(bytes(data) + b"\x00" * int(rng.integers(1, 16)))
    elif how in ("manifest value", "manifest delete", "manifest unsealed"):
        targets = UNSEALED_TARGETS if how == "manifest unsealed" else MANIFEST_TARGETS
        target = targets[int(rng.integers(len(targets)))]
        parent = manifest
        for k in target[:-1]:
            parent = parent[k]
        old = parent[target[-1]]
        name += " " + ".".join(str(k) for k in target)
        if how == "manifest delete":
            if isinstance(parent, list):
                parent.pop(target[-1])
            else:
                del parent[target[-1]]
        else:
            choices = [None, -1, 0, "x", [], {}, 1e300, True, 2**70]
            if how == "manifest unsealed" and isinstance(old, (int, float)) and not isinstance(old, bool):
                choices += [old + 1, old - 1]  # capacity +- 1 too: the same packs fit, only the checksum can tell
            elif target == ("config", "capacity"):
                choices.append(1)  # capacity +- 1 can describe the very same packs: not damage once re-sealed
            elif isinstance(old, int) and not isinstance(old, bool):
                choices += [old + 1, old - 1]
            new = choices[int(rng.integers(len(choices)))]
            if new == old and type(new) is type(old):
                new = "changed"
            parent[target[-1]] = new
        # re-sealed, the change must be found by the cross-checks; unsealed, by the manifest checksum
        manifest_path.write_text(json.dumps(manifest if how == "manifest unsealed" else fmt.seal_manifest(manifest)))
    elif how == "manifest bytes":
        # cut short (a flipped byte inside a value verify does not interpret is the "manifest unsealed" case)
        raw = manifest_path.read_bytes()
        manifest_path.write_bytes(raw[: int(rng.integers(len(raw) - 1))])
    else:
        (out / fmt.HF_STATE_FILE).write_text('{"_data_files": []}')
    result = {"case": i, "name": name}
    try:
        plain = verify_packed(out)
        full = verify_packed(out, inputs=[path])
    except BaseException:  # noqa: BLE001 - verify must report damage, never raise on it
        result.update(outcome="traceback", detail=traceback.format_exc()[-2000:])
        return result
    shard_damage = how.startswith("shard") or how in ("manifest bytes", "state.json")  # found without the input
    missed = full.ok or (shard_damage and plain.ok)
    if how == "manifest unsealed":  # the checksum (or, for format and version, the manifest check) finds it alone
        missed = missed or not {"manifest", "manifest_checksum"} & set(plain.failed())
    result.update(outcome="wrong" if missed else "detected",
                  detail=("damage not reported: " + full.format()[-800:]) if missed else ", ".join(full.failed()))
    shutil.rmtree(case_dir, ignore_errors=True)
    return result


def main_fuzz(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--workdir", required=True)
    args = p.parse_args(argv)
    faulthandler.enable()
    work = Path(args.workdir)
    rng = np.random.default_rng(args.seed)
    for i in range(args.cases):
        print(json.dumps({"case": i, "start": True}), flush=True)
        case = run_verify_case if i % 4 == 3 else run_case
        print(json.dumps(case(i, rng, work)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_fuzz())
