"""Seeded fuzz cases for the read side, run in a subprocess by tests/test_read_fuzz.py and benchmarks/fuzz_read.py.

    python tests/_read_fuzz_worker.py --seed 0 --cases 80 --workdir /tmp/rfuzz [--first 0] [--loader-every 4]

One small packed folder (sequence ``i`` is ``[token(i, 0), token(i, 1), ...]``, no labels column, so labels are the
tokens with ``-100`` at every sequence start) is written once; each case copies it and damages the copy:

* ``flip``: 1 to 3 random bytes of one shard flipped; the manifest re-sealed with the shard's new checksum (an
  attacker, or damage before packing finished) or left alone (damage on disk, which the checksum sees);
* ``flip <region>``: one byte flipped inside one buffer of one shard (``cu_seqlens`` values or offsets,
  ``input_ids``/``labels`` values or offsets, ``seq_index`` values), re-sealed;
* ``cu <value>`` / ``offset <column> <value>``: one ``cu_seqlens`` entry or one list offset overwritten with a crafted
  int32 (2**31-1, 1,000,000, -1, 0, a neighbour's value, ...), re-sealed;
* ``manifest <edit>``: a crafted manifest (capacity 10**8, a shard left out, ``../`` names, wrong types, missing
  keys, deep nesting, 70 MB, no checksum, ...) re-sealed with :func:`packer.format.seal_manifest`;
* ``file <kind>``: a shard replaced by a symlink out of the folder, a FIFO, a folder, /dev/zero, or removed.

Then it reads the copy through ``PackedDataset`` (every item), a ``DataLoader`` with 2 fork workers (every
``--loader-every``-th case, they cost 0.2 s), ``PackSampler``, ``packer stats``, ``packer report`` and
``packer verify``, and prints one JSON line per case with ``outcome``:

* ``ok``: every reader succeeded and every item equals the undamaged folder's;
* ``error``: refused with a PackerError (exit 2; verify exit 1), no traceback;
* ``explained``: items differ from the original only in ``input_ids``/``labels`` values, a damaged byte lies in those
  columns' value buffers, and every offset and ``cu_seqlens`` entry that items read is as before: only the shard
  checksums can see that (``verify=True`` / ``packer verify``);
* failures: ``silent`` (any other difference), ``traceback`` (another exception, or a traceback printed),
  ``verify missed`` (the dataset refused the folder, or an unsealed shard changed, and verify exited 0).

A ``start`` line precedes each case, so that a crash (a signal) or a hang names its case: the driver restarts the
worker at the next case (``--first``).
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import os
import shutil
import struct
import sys
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packer import format as fmt  # noqa: E402
from packer.cli import main  # noqa: E402
from packer.convert import PackConfig, pack_dataset  # noqa: E402
from packer.errors import PackerError  # noqa: E402
from tests._verify_helpers import rows_table, write_stream  # noqa: E402

CAPACITY = 64
CU_VALUES = (2**31 - 1, 1_000_000, -1, -(2**31), 0, 1, CAPACITY, CAPACITY + 1, 20001, 65536)
REGIONS = ("cu values", "cu offsets", "ids values", "ids offsets", "labels values", "labels offsets", "seq values")
MANIFEST_EDITS = (
    "capacity 1e8", "capacity 1e8 restated", "capacity below longest", "capacity 0", "capacity str", "capacity float",
    "omit shard", "omit shard restated", "duplicate shard", "swap shards", "dotdot name", "absolute name",
    "rows str", "rows negative", "bytes wrong", "tokens wrong", "checksum int", "no checksum", "bad checksum key",
    "stats missing", "stats key missing", "stats nan", "stats str", "stats list", "config list", "shards dict",
    "shards empty", "shard entry list", "version str", "format missing", "deep 50", "deep 100000", "huge",
    "run list", "input str", "columns missing", "overflow bad", "padding wrong", "not json", "empty file",
    "stats zero", "stats huge",
)
FILE_KINDS = ("symlink out", "symlink in", "fifo", "folder", "devzero", "missing", "manifest fifo",
              "manifest symlink", "empty shard")


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def make_base(workdir: Path) -> Path:
    rng = np.random.default_rng(1234)
    lengths = [int(n) for n in rng.integers(1, 40, 60)]
    src = write_stream(rows_table(lengths), workdir / "in.arrow")
    out = workdir / "base"
    with contextlib.redirect_stderr(io.StringIO()):
        pack_dataset([src], out, config=PackConfig(capacity=CAPACITY, shard_size=5), progress=False)
    return out


def regions(path: Path) -> dict[str, tuple[int, int]]:
    """Byte ranges (start, end) of each list column's values and offsets buffers in a shard file."""
    data = path.read_bytes()
    buf = pa.py_buffer(data)
    table = pa.ipc.open_stream(buf).read_all()
    out = {}
    for name, key in ((fmt.CU_SEQLENS, "cu"), (fmt.INPUT_IDS, "ids"), (fmt.LABELS, "labels"),
                      (fmt.SEQ_INDEX, "seq"), (fmt.SEQ_OFFSET, "seqoff")):
        arr = table.column(name).chunk(0)
        off = arr.buffers()[1]
        vals = arr.values.buffers()[1]
        out[f"{key} offsets"] = (off.address - buf.address, off.address - buf.address + off.size)
        out[f"{key} values"] = (vals.address - buf.address, vals.address - buf.address + vals.size)
    return out


def structure(path: Path) -> list:
    """Everything an item is built from but the token and label values: the row offsets of input_ids, labels and
    cu_seqlens, and cu_seqlens' values (items do not read seq_index or seq_offset; report and verify do)."""
    table = pa.ipc.open_stream(pa.py_buffer(path.read_bytes())).read_all()
    out = [table.num_rows]
    for name in (fmt.INPUT_IDS, fmt.LABELS, fmt.CU_SEQLENS):
        column = table.column(name).combine_chunks()
        out.append(column.offsets.to_pylist())
        if name == fmt.CU_SEQLENS:
            out.append(column.values.to_pylist())
    return out


def load(folder: Path) -> dict:
    return json.loads((folder / fmt.MANIFEST_FILE).read_text())


def save(folder: Path, manifest: dict, *, seal: bool = True) -> None:
    if seal:
        manifest = fmt.seal_manifest(manifest)
    (folder / fmt.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def reseal_shard(folder: Path, index: int) -> None:
    m = load(folder)
    entry = m[fmt.MANIFEST_SHARDS][index]
    p = folder / entry["file"]
    entry[fmt.SHARD_BYTES] = p.stat().st_size
    entry[fmt.SHARD_CHECKSUM] = fmt.file_checksum(p)
    save(folder, m)


def _set_capacity(m: dict, cap) -> None:
    m["config"]["capacity"] = cap
    st = m["stats"]
    st["capacity"] = cap
    st["padding_tokens"] = st["packs"] * cap - st["tokens_out"]


def edit_manifest(folder: Path, edit: str, rng) -> None:
    m = load(folder)
    shards, stats = m[fmt.MANIFEST_SHARDS], m[fmt.MANIFEST_STATS]
    seal = True
    if edit == "capacity 1e8":
        m["config"]["capacity"] = 10**8
    elif edit == "capacity 1e8 restated":  # consistent everywhere: a folder packed with --max-length 10**8 ...
        _set_capacity(m, 10**5)  # ... kept at 10**5 here so that items stay 2.4 MB: what the manifest says
    elif edit == "capacity below longest":
        _set_capacity(m, 8)
    elif edit == "capacity 0":
        _set_capacity(m, 0)
    elif edit == "capacity str":
        m["config"]["capacity"] = str(CAPACITY)
    elif edit == "capacity float":
        m["config"]["capacity"] = CAPACITY + 0.5
    elif edit in ("omit shard", "omit shard restated"):
        k = int(rng.integers(0, len(shards)))
        gone = shards.pop(k)
        if edit == "omit shard restated":  # names renumbered, stats made to add up: the files still disagree
            for i, s in enumerate(shards):
                s["file"] = fmt.shard_name(i, len(shards))
            stats["packs"] -= gone["rows"]
            stats["tokens_out"] -= gone["tokens"]
            stats["sequences_out"] -= gone["sequences"]
            stats["padding_tokens"] = stats["packs"] * CAPACITY - stats["tokens_out"]
    elif edit == "duplicate shard":
        shards[1] = dict(shards[0])
    elif edit == "swap shards":
        shards[0], shards[1] = shards[1], shards[0]
    elif edit == "dotdot name":
        shards[0]["file"] = "../../outside/x.arrow"
    elif edit == "absolute name":
        shards[0]["file"] = str((folder / shards[0]["file"]).resolve())
    elif edit == "rows str":
        shards[0]["rows"] = str(shards[0]["rows"])
    elif edit == "rows negative":
        shards[0]["rows"] = -1
    elif edit == "bytes wrong":
        shards[0]["bytes"] += 1
    elif edit == "tokens wrong":
        shards[0]["tokens"] += 1
        stats["tokens_out"] += 1
        stats["padding_tokens"] -= 1
    elif edit == "checksum int":
        shards[0][fmt.SHARD_CHECKSUM] = 12345
    elif edit == "no checksum":
        m.pop(fmt.MANIFEST_CHECKSUM, None)
        seal = False
    elif edit == "bad checksum key":
        m[fmt.MANIFEST_CHECKSUM] = {"a": [1, 2]}
        seal = False
    elif edit == "stats missing":
        del m["stats"]
    elif edit == "stats key missing":
        del stats[str(rng.choice(sorted(stats)))]
    elif edit == "stats nan":
        stats[str(rng.choice(sorted(stats)))] = float("nan")
    elif edit == "stats str":
        stats[str(rng.choice(sorted(stats)))] = "12"
    elif edit in ("stats zero", "stats huge"):
        stats[str(rng.choice(sorted(stats)))] = 0 if edit == "stats zero" else 10**12
    elif edit == "stats list":
        m["stats"] = [1, 2]
    elif edit == "config list":
        m["config"] = [CAPACITY]
    elif edit == "shards dict":
        m["shards"] = {"0": shards[0]}
    elif edit == "shards empty":
        m["shards"] = []
    elif edit == "shard entry list":
        shards[0] = [shards[0]["file"]]
    elif edit == "version str":
        m["format_version"] = "1"
    elif edit == "format missing":
        del m["format"]
    elif edit == "deep 50":
        deep = 1
        for _ in range(50):
            deep = [deep]
        m["input"]["extra"] = deep
    elif edit == "deep 100000":
        (folder / fmt.MANIFEST_FILE).write_text('{"format": "packer.packed", "x": ' + "[" * 100_000 + "]" * 100_000
                                                 + "}")
        return
    elif edit == "huge":
        with open(folder / fmt.MANIFEST_FILE, "r+b") as fh:
            fh.truncate(getattr(fmt, "MAX_MANIFEST_BYTES", 64 << 20) + 1)  # sparse: costs nothing to write
        return
    elif edit == "run list":
        m["run"] = [1]
    elif edit == "input str":
        m["input"] = "x"
    elif edit == "columns missing":
        del m["config"]["columns"]
    elif edit == "overflow bad":
        m["config"]["overflow"] = "explode"
    elif edit == "padding wrong":
        stats["padding_tokens"] += 1
    elif edit == "not json":
        (folder / fmt.MANIFEST_FILE).write_text("{not json")
        return
    elif edit == "empty file":
        (folder / fmt.MANIFEST_FILE).write_text("")
        return
    else:
        raise ValueError(edit)
    save(folder, m, seal=seal)


def edit_file(folder: Path, kind: str, workdir: Path) -> None:
    m = load(folder)
    name = m[fmt.MANIFEST_SHARDS][1]["file"]
    p = folder / name
    if kind.startswith("manifest"):
        p = folder / fmt.MANIFEST_FILE
    if kind in ("symlink out", "manifest symlink"):
        outside = workdir / f"outside-{os.getpid()}.bin"
        shutil.copy(p, outside)
        p.unlink()
        p.symlink_to(outside)
    elif kind == "symlink in":  # a symlink to another shard of the folder
        p.unlink()
        p.symlink_to(m[fmt.MANIFEST_SHARDS][0]["file"])
    elif kind in ("fifo", "manifest fifo"):
        p.unlink()
        os.mkfifo(p)
    elif kind == "folder":
        p.unlink()
        p.mkdir()
    elif kind == "devzero":
        p.unlink()
        p.symlink_to("/dev/zero")
    elif kind == "missing":
        p.unlink()
    elif kind == "empty shard":
        p.write_bytes(b"")
        reseal_shard(folder, 1)
    else:
        raise ValueError(kind)


def damage(folder: Path, case: int, rng, workdir: Path, base_regions: list[dict]) -> tuple[str, dict]:
    """Damage ``folder``; returns the case name and what the checks need (``changed``: (shard, [byte offsets]),
    ``sealed``: whether the shard checksums were re-sealed)."""
    m = load(folder)
    n_shards = len(m[fmt.MANIFEST_SHARDS])
    kind = case % 6
    info: dict = {"changed": None, "sealed": True}
    if kind in (0, 1):  # random flips anywhere, or in one region
        s = int(rng.integers(0, n_shards))
        p = folder / m[fmt.MANIFEST_SHARDS][s]["file"]
        data = bytearray(p.read_bytes())
        if kind == 0:
            where = sorted({int(x) for x in rng.integers(0, len(data), int(rng.integers(1, 4)))})
            name = "flip"
        else:
            region = str(rng.choice(REGIONS))
            a, b = base_regions[s][region]
            where = [int(rng.integers(a, b))]
            name = f"flip {region}"
        for w in where:
            data[w] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(data))
        sealed = kind == 1 or bool(rng.integers(0, 2))
        if sealed:
            reseal_shard(folder, s)
        info.update(changed=(s, where), sealed=sealed)
        return name + ("" if sealed else " unsealed"), info
    if kind in (2, 3):  # crafted int32 in cu_seqlens values, or in an offsets buffer
        s = int(rng.integers(0, n_shards))
        p = folder / m[fmt.MANIFEST_SHARDS][s]["file"]
        data = bytearray(p.read_bytes())
        region = "cu values" if kind == 2 else str(rng.choice(("cu offsets", "ids offsets", "labels offsets")))
        a, b = base_regions[s][region]
        n = (b - a) // 4
        k = int(rng.integers(0, n))
        old = struct.unpack_from("<i", data, a + 4 * k)[0]
        choice = int(rng.integers(0, len(CU_VALUES) + 2))
        if choice < len(CU_VALUES):
            value, what = CU_VALUES[choice], str(CU_VALUES[choice])
        elif choice == len(CU_VALUES):  # a neighbour's value (two entries equal, or a swap's first half)
            j = k + 1 if k + 1 < n else k - 1
            value, what = struct.unpack_from("<i", data, a + 4 * j)[0], "neighbour"
        else:  # moved by one, either way
            value, what = old + int(rng.choice((-1, 1))), "moved by one"
        if value == old:  # e.g. 0 written over the 0 that starts every pack: damage it anyway
            value, what = old ^ 1, "moved by one"
        struct.pack_into("<i", data, a + 4 * k, value)
        p.write_bytes(bytes(data))
        reseal_shard(folder, s)
        info.update(changed=(s, list(range(a + 4 * k, a + 4 * k + 4))))
        return (f"cu {what}" if kind == 2 else f"offset {region.split()[0]} {what}"), info
    if kind in (4,):
        edit = MANIFEST_EDITS[(case // 6) % len(MANIFEST_EDITS)]
        edit_manifest(folder, edit, rng)
        return f"manifest {edit}", info
    kind_name = FILE_KINDS[(case // 6) % len(FILE_KINDS)]
    edit_file(folder, kind_name, workdir)
    return f"file {kind_name}", info


def items_of(ds) -> list[dict]:
    out = []
    for i in range(len(ds)):
        it = ds[i]
        out.append({k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in it.items()})
    return out


def differs(a: list[dict], b: list[dict]) -> set[str]:
    """Keys whose values differ between two item lists (``len`` when the counts differ)."""
    if len(a) != len(b):
        return {"len"}
    keys = set()
    for x, y in zip(a, b):
        for k in x:
            vx, vy = x[k], y.get(k)
            same = np.array_equal(vx, vy) if isinstance(vx, np.ndarray) else vx == vy
            if not same:
                keys.add(k)
    return keys


def cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, err.getvalue() + out.getvalue()


def run_case(folder: Path, info: dict, reference: list[dict], base_regions: list[dict], loader: bool) -> tuple:
    import torch
    from torch.utils.data import DataLoader

    from packer.torch import PackedDataset, PackSampler

    notes = []
    items = None
    try:
        ds = PackedDataset(folder)
        items = items_of(ds)
        if loader:
            dl = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=list,
                            multiprocessing_context=torch.multiprocessing.get_context("fork"))
            got = [{k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in b[0].items()} for b in dl]
            if differs(got, items):
                return "silent", "DataLoader workers read other items than the main process"
        list(PackSampler(ds, batch_size=2, seed=0))
    except PackerError as e:
        notes.append(f"dataset: {str(e)[:160]}")
    except RuntimeError as e:  # a worker's PackerError comes back as a RuntimeError naming it
        if "PackerError" not in str(e):
            return "traceback", traceback.format_exc()[-2000:]
        notes.append(f"loader: {str(e)[:160]}")
    refused = bool(notes)
    for argv in (["stats", str(folder)], ["report", str(folder)], ["verify", str(folder)]):
        rc, text = cli(argv)
        if "Traceback" in text or rc not in (0, 1, 2) or (rc == 1 and argv[0] != "verify"):
            return "traceback", f"{argv[0]} exit {rc}: {text[-2000:]}"
        if argv[0] == "verify":
            if rc == 0 and refused:
                return "verify missed", f"the dataset refused the folder ({notes[0]}) but verify exited 0"
            if rc == 0 and info["changed"] is not None and not info["sealed"]:
                return "verify missed", "a shard changed without re-sealing, and verify exited 0"
    if refused:
        return "error", notes[0]
    diff = differs(items, reference)
    if not diff:
        return "ok", ""
    changed = info["changed"]
    if changed is not None and diff <= {"input_ids", "labels", "num_label_tokens"}:
        r = base_regions[changed[0]]
        values = [r["ids values"], r["labels values"]]
        inside = lambda w, spans: any(a <= w < b for a, b in spans)  # noqa: E731
        name = load(folder)[fmt.MANIFEST_SHARDS][changed[0]]["file"]
        if any(inside(w, values) for w in changed[1]) and structure(folder / name) == r["structure"]:
            return "explained", (f"{sorted(diff)} changed, every offset and cu_seqlens entry as before: the damage "
                                 "changed token/label values")
    if info.get("restated") and diff <= {"input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen"}:
        return "ok", "the manifest says another capacity, consistently"
    return "silent", f"{sorted(diff)} differ from the original folder"


def drive(*, seed: int, cases: int, workdir: Path, timeout: float = 120.0, loader_every: int = 4,
          python: str = sys.executable, log=None) -> list[dict]:
    """Run cases ``0..cases-1`` in worker subprocesses; a worker killed by a signal or stuck past ``timeout`` seconds
    without finishing a case is recorded against the case it started (``crash`` / ``hang``) and a new worker resumes
    at the next case. Returns one result per case."""
    import subprocess

    results: dict[int, dict] = {}
    first = 0
    while first < cases:
        cmd = [python, str(Path(__file__).resolve()), "--seed", str(seed), "--cases", str(cases), "--first",
               str(first), "--workdir", str(workdir), "--loader-every", str(loader_every)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        started = None
        import selectors
        import time

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        hung = False
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                hung = True
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            r = json.loads(line)
            if "start" in r:
                started = r
                deadline = time.monotonic() + timeout
            else:
                results[r["case"]] = r
                if log is not None:
                    log(r)
        sel.close()
        stderr = proc.stderr.read()
        rc = proc.wait()
        if started is not None and started["start"] not in results:
            outcome = "hang" if hung else "crash"
            r = {"case": started["start"], "name": started["name"], "outcome": outcome,
                 "detail": f"worker exit {rc}: {stderr[-2000:]}"}
            results[r["case"]] = r
            if log is not None:
                log(r)
            first = started["start"] + 1
        elif rc != 0 or hung:
            raise RuntimeError(f"the fuzz worker failed outside a case (exit {rc}): {stderr[-3000:]}")
        else:
            first = cases
    return [results[c] for c in sorted(results)]


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--loader-every", type=int, default=4)
    args = ap.parse_args(argv)
    faulthandler.enable()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = args.workdir / "base"
    if not (base / fmt.MANIFEST_FILE).exists():
        base = make_base(args.workdir)
    from packer.torch import PackedDataset

    reference = items_of(PackedDataset(base))
    names = load(base)[fmt.MANIFEST_SHARDS]
    base_regions = [{**regions(base / s["file"]), "structure": structure(base / s["file"])} for s in names]
    for case in range(args.first, args.cases):
        rng = np.random.default_rng([args.seed, case])
        folder = args.workdir / f"case-{case}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        name, info = damage(folder, case, rng, args.workdir, base_regions)
        info["restated"] = name == "manifest capacity 1e8 restated"
        _emit({"start": case, "name": name})
        try:
            outcome, detail = run_case(folder, info, reference, base_regions, loader=case % args.loader_every == 0)
        except Exception:  # noqa: BLE001 - any other exception is what the fuzz looks for
            outcome, detail = "traceback", traceback.format_exc()[-2000:]
        _emit({"case": case, "name": name, "outcome": outcome, "detail": detail})
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_())
