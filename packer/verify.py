"""Prove a packed folder: checksums, format invariants and, given the input, that nothing was lost or changed.

:func:`verify_packed` returns a :class:`VerifyReport` that lists every check (:data:`CHECKS`) with its outcome and
every defect found, naming the shard, the pack (global index, the row of the shard's table counted across shards),
the input row and what differs. It never raises for a damaged folder (damage is a defect); it raises
:class:`packer.errors.PackerError` only for bad arguments or an input it cannot read.

The checks work on whole shards at once: each column is a numpy view of the memory-mapped Arrow buffers (an
offsets array plus one flat values array), and every invariant is a handful of numpy expressions over those flat
arrays, never a Python loop over packs or tokens. Python loops run only over shards, input chunks and the (at most
``max_defects`` per check) defects that are reported.

Example:
    >>> report = verify_packed("packed/", inputs=["data_samples/reference_like"])   # doctest: +SKIP
    >>> report.ok, report.n_defects                                                 # doctest: +SKIP
    (True, 0)
    >>> text = report.format()      # the per-check lines, then the defects         # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.errors import PackerError
from packer.plan import OVERFLOW_POLICIES
from packer.reader import Columns, TokenizedInput, input_fingerprint, open_input, resolve_paths

log = logging.getLogger(__name__)

CHECKS = {
    "manifest": "manifest readable, known format version, config and shard list well-formed",
    "manifest_checksum": f"the manifest's own {fmt.CHECKSUM} checksum equals its content's (everything but the run "
    "timings): not modified or damaged since packing",
    "files": "every listed shard present at its recorded size, no unlisted data file, state.json lists the shards",
    "checksums": f"every shard's {fmt.CHECKSUM} checksum equals the manifest's",
    "schema": "every shard is an Arrow IPC stream with the format's schema, no nulls, valid offsets, rows as listed",
    "capacity": "every pack holds 1..capacity tokens and as many labels as tokens",
    "cu_seqlens": "cu_seqlens starts at 0, strictly increases, ends at the pack's length, one entry per sequence + 1",
    "labels": "label -100 at every sequence's first token; token ids >= 0; labels -100 or >= 0, equal to the "
    "tokens where the config has no labels column (or -100 where it has a loss mask)",
    "provenance": "seq_index within the input's rows, seq_offset as the overflow policy makes it, no (row, offset) "
    "twice, split chunks contiguous",
    "counts": "rows, sequences, tokens and label tokens per shard and in total equal the manifest and its stats",
    "input": "the input has the rows and the fingerprint the manifest records",
    "coverage": "every input sequence is in exactly one pack, or empty, dropped or truncated as the overflow policy "
    "says, and the statistics' counts of each add up exactly",
    "tokens": "every packed sequence's tokens and labels equal the input's (labels masked at sequence starts)",
    "alignment": "with --pad-to-multiple-of N: config.pad_to_multiple_of valid, every shard has cu_seqlens_padded, "
    "each sequence's padded span is its length rounded up to a multiple of N, every padded pack fits the capacity, "
    "and the alignment statistics add up; without it: no shard has cu_seqlens_padded",
}
INPUT_CHECKS = ("input", "coverage", "tokens")
DEFAULT_MAX_DEFECTS = 20
_NAME_WIDTH = max(map(len, CHECKS))
_BLOCK_TOKENS = 1 << 22  # token comparisons run in blocks of 4M tokens: 3 int64 temporaries of 32 MB each


@dataclass(frozen=True)
class Defect:
    """One thing that is wrong. ``pack`` is the global pack index; ``row`` the input row of the sequence."""

    check: str
    message: str
    shard: str | None = None
    pack: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        where = []
        if self.shard is not None:
            where.append(self.shard)
        if self.pack is not None:
            where.append(f"pack {self.pack}")
        if self.row is not None:
            where.append(f"input row {self.row}")
        return f"{self.check}: {', '.join(where) + ': ' if where else ''}{self.message}"


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome: ``status`` is ``"ok"``, ``"failed"`` or ``"skipped"`` (with the reason in ``detail``)."""

    name: str
    description: str
    status: str
    detail: str
    defects: int


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_packed` checked and found.

    Attributes:
        folder: the packed folder.
        checks: one :class:`CheckResult` per entry of :data:`CHECKS`.
        defects: the defects, at most ``max_defects`` per check (``n_defects`` counts them all).
        n_defects: all defects found.
        packs, sequences, tokens: what the shards hold (as read).
        input_rows: rows of the input compared, or None without an input.
        seconds: time taken.
    """

    folder: str
    checks: tuple[CheckResult, ...]
    defects: tuple[Defect, ...]
    n_defects: int
    packs: int
    sequences: int
    tokens: int
    input_rows: int | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.n_defects == 0

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.name for c in self.checks if c.status == "failed"]

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED with {self.n_defects:,} defect(s) in {', '.join(self.failed())}"
        against = f", compared with {self.input_rows:,} input rows" if self.input_rows is not None else ""
        return (f"verify {self.folder}: {verdict}: {self.packs:,} packs, {self.sequences:,} sequences, "
                f"{self.tokens:,} tokens{against} in {self.seconds:.2f}s")

    def format(self) -> str:
        """The summary, one line per check, then the defects (multi-line, for people)."""
        lines = [self.summary()]
        for c in self.checks:
            mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[c.status]
            lines.append(f"  {mark} {c.name:<{_NAME_WIDTH}} {c.detail}")
        if self.defects:
            lines.append("defects:" if len(self.defects) == self.n_defects
                         else f"defects (first {len(self.defects)} of {self.n_defects:,}):")
            lines.extend(f"  {d}" for d in self.defects)
        return "\n".join(lines)


class _Collector:
    def __init__(self, max_defects: int):
        self.max = max_defects
        self.defects: dict[str, list[Defect]] = {name: [] for name in CHECKS}
        self.counts = dict.fromkeys(CHECKS, 0)
        self.detail: dict[str, str] = {}
        self.ran: set[str] = set()

    def add(self, check: str, message: str, *, shard=None, pack=None, row=None) -> None:
        self.counts[check] += 1
        if len(self.defects[check]) < self.max:
            self.defects[check].append(Defect(check, message, shard, None if pack is None else int(pack),
                                              None if row is None else int(row)))

    def room(self, check: str) -> int:
        return self.max - len(self.defects[check])

    def many(self, check: str, where: np.ndarray, describe) -> None:
        """Record a defect at each index of ``where``: the first few listed via ``describe(i) -> (message,
        keywords for add)``, all counted."""
        n = int(where.shape[0])
        listed = min(n, self.room(check))
        for i in where[:listed]:
            message, kw = describe(int(i))
            self.add(check, message, **kw)
        self.counts[check] += n - listed


@dataclass
class _Shard:
    """One shard's columns as flat numpy arrays; offsets int64 rebased to start at 0."""

    name: str
    pack_base: int
    ids_off: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    cu_off: np.ndarray
    cu: np.ndarray
    seq_off: np.ndarray
    seq_index: np.ndarray
    seq_offset: np.ndarray


def verify_packed(
    folder: str | os.PathLike,
    *,
    inputs: TokenizedInput | Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    max_defects: int = DEFAULT_MAX_DEFECTS,
    checksums: bool = True,
    allow_unsealed: bool = False,
) -> VerifyReport:
    """Check a packed folder (see :data:`CHECKS`), and against its input when ``inputs`` is given.

    Args:
        folder: the packed folder.
        inputs: the tokenized input it was packed from (paths as for ``packer pack``, or an opened
            :class:`packer.reader.TokenizedInput`); its columns are the ones the manifest's config names.
        max_defects: defects listed per check (all are counted).
        checksums: hash every shard (skip only to time the other checks).
        allow_unsealed: a manifest without its own checksum (an older packer's) is a note, not a defect.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is True when no defect was found.

    Raises:
        PackerError: ``max_defects`` is not a positive integer, or an input path does not exist. An input that
            exists but cannot be read with the manifest's columns is a defect of the ``input`` check.
    """
    if isinstance(max_defects, bool) or not isinstance(max_defects, int) or max_defects < 1:
        raise PackerError(f"max_defects must be a positive integer, got {max_defects!r}")
    t0 = time.perf_counter()
    folder = Path(folder)
    col = _Collector(max_defects)
    totals = {"packs": 0, "sequences": 0, "tokens": 0}
    inp = None
    if inputs is not None and not isinstance(inputs, TokenizedInput):
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    try:
        manifest = fmt.read_manifest(folder, checksum=False)  # checked below, so the other checks still run
    except PackerError as e:
        col.ran.add("manifest")
        col.add("manifest", str(e))
        manifest = None
    if manifest is not None:
        _check_manifest_checksum(folder, manifest, col, allow_unsealed=allow_unsealed)
    cfg = _check_manifest(manifest, col) if manifest is not None else None
    if cfg is not None:
        if inputs is not None and not isinstance(inputs, TokenizedInput):
            files = resolve_paths(inputs)  # a path that does not exist is the caller's error: it raises
            try:
                inp = open_input(files, columns=cfg["columns"])
            except PackerError as e:  # the input does not match the manifest's columns, or is damaged
                col.ran.add("input")
                col.add("input", f"cannot be compared: {e}")
        elif inputs is not None:
            inp = inputs
        _verify(folder, manifest, cfg, inp, col, totals, checksums=checksums)
    seconds = time.perf_counter() - t0
    checks = []
    for name, desc in CHECKS.items():
        n = col.counts[name]
        if name not in col.ran:
            why = "needs --input" if name in INPUT_CHECKS and inputs is None else "not reached: see the defects above"
            if name == "checksums" and not checksums and manifest is not None:
                why = "turned off"
            if name == "manifest_checksum" and name in col.detail:  # no checksum to check: say why
                why = col.detail[name]
            checks.append(CheckResult(name, desc, "skipped", why, 0))
        elif n:
            checks.append(CheckResult(name, desc, "failed", f"{n:,} defect(s)", n))
        else:
            checks.append(CheckResult(name, desc, "ok", col.detail.get(name, desc), 0))
    defects = tuple(d for name in CHECKS for d in col.defects[name])
    return VerifyReport(
        folder=str(folder),
        checks=tuple(checks),
        defects=defects,
        n_defects=sum(col.counts.values()),
        packs=totals["packs"],
        sequences=totals["sequences"],
        tokens=totals["tokens"],
        input_rows=None if inp is None else inp.n_rows,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------------- manifest


def _is_int(x, lo=0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def _check_manifest_checksum(folder: Path, manifest: dict, col: _Collector, *, allow_unsealed: bool) -> None:
    """The manifest's own checksum; a manifest without one (an older packer's, or a deleted key) is a defect unless
    ``allow_unsealed``, then a note."""
    try:
        sealed = fmt.check_manifest_checksum(manifest, folder / fmt.MANIFEST_FILE)
    except RecursionError:  # cannot happen after read_manifest's depth bound; kept so verify never raises
        col.ran.add("manifest_checksum")
        col.add("manifest_checksum", "the manifest nests too deep to be checksummed")
        return
    except PackerError as e:
        col.ran.add("manifest_checksum")
        col.add("manifest_checksum", str(e))
        return
    if sealed:
        col.ran.add("manifest_checksum")
        col.detail["manifest_checksum"] = (f"{fmt.MANIFEST_FILE} {fmt.CHECKSUM} "
                                           f"{manifest[fmt.MANIFEST_CHECKSUM][:16]}... matches its content")
    elif allow_unsealed:
        col.detail["manifest_checksum"] = ("manifest has no checksum (written by an older packer); "
                                           "'packer verify --reseal' adds one")
    else:
        col.ran.add("manifest_checksum")
        col.add("manifest_checksum", f"{fmt.MANIFEST_FILE} has no {fmt.MANIFEST_CHECKSUM!r}, so an edit or damage of "
                "it cannot be detected (an older packer's folder, or the key was deleted); if the folder is yours, "
                f"'packer verify {folder} --reseal' adds one, or pass --allow-unsealed to accept it as it is")


def reseal_manifest(folder: str | os.PathLike, *, inputs=None, max_defects: int = DEFAULT_MAX_DEFECTS
                    ) -> tuple[VerifyReport, bool]:
    """Verify ``folder`` and, if nothing but the manifest checksum is wrong (or missing), record the manifest's
    current checksum: for a manifest edited on purpose, or one written by a packer without manifest checksums.

    The manifest is rewritten atomically (a temporary file in the folder, fsynced, then ``os.replace``), with its
    content and key order unchanged apart from :data:`packer.format.MANIFEST_CHECKSUM`.

    Args:
        folder, inputs, max_defects: as for :func:`verify_packed` (with ``inputs``, the edited manifest is also
            checked against the input).

    Returns:
        ``(report, resealed)``: the report of the folder before resealing, and whether the manifest was rewritten
        (False when it already matched, or when any other check failed).
    """
    report = verify_packed(folder, inputs=inputs, max_defects=max_defects)
    if report.failed() not in ([], ["manifest_checksum"]):
        return report, False
    path = Path(folder) / fmt.MANIFEST_FILE
    manifest = fmt.read_manifest(folder, checksum=False)
    sealed = fmt.seal_manifest(manifest)
    if manifest.get(fmt.MANIFEST_CHECKSUM) == sealed[fmt.MANIFEST_CHECKSUM]:
        return report, False
    tmp = path.with_name(f".{fmt.MANIFEST_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(sealed, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PackerError(f"{path}: could not rewrite the manifest ({e.strerror or e})") from None
    log.info("%s: resealed, %s %s", path, fmt.MANIFEST_CHECKSUM, sealed[fmt.MANIFEST_CHECKSUM])
    return report, True


def _check_manifest(manifest: dict, col: _Collector) -> dict | None:
    """Validate the manifest's fields (:func:`packer.format.manifest_field_problems`, and the config's overflow
    policy and columns); return the usable config (columns as :class:`Columns`) or None when the config or the shard
    list cannot be used. Problems of ``stats`` alone are defects, and the shards are still checked."""
    col.ran.add("manifest")
    add = lambda msg: col.add("manifest", msg)  # noqa: E731
    blocking = False
    for key, message in fmt.manifest_field_problems(manifest):
        add(message)
        blocking |= key != fmt.MANIFEST_STATS
    cfg = manifest.get(fmt.MANIFEST_CONFIG)
    if not isinstance(cfg, dict) or not isinstance(manifest.get(fmt.MANIFEST_STATS), dict):
        return None
    if isinstance(cfg.get("overflow"), str) and cfg["overflow"] not in OVERFLOW_POLICIES:
        add(f"config.overflow is {fmt.short_repr(cfg['overflow'])}, not one of {', '.join(OVERFLOW_POLICIES)}")
        blocking = True
    columns = cfg.get("columns")
    try:
        if not isinstance(columns, dict) or set(columns) != {"input_ids", "labels", "loss_mask"}:
            raise TypeError("needs exactly the keys input_ids, labels, loss_mask")
        columns = Columns(**columns)
        if not isinstance(columns.input_ids, str):
            raise TypeError("input_ids is not a string")
    except (TypeError, PackerError) as e:
        add(f"config.columns is {fmt.short_repr(cfg.get('columns'))}, not input_ids/labels/loss_mask column names "
            f"({e})")
        blocking = True
    if blocking:
        return None
    n = len(manifest[fmt.MANIFEST_SHARDS])
    capacity = cfg["capacity"]
    col.detail["manifest"] = (f"{fmt.FORMAT_NAME} v{manifest[fmt.MANIFEST_VERSION]}, {n} shard(s), capacity "
                              f"{capacity:,}, overflow {cfg['overflow']}, well-formed")
    return {"capacity": capacity, "overflow": cfg["overflow"], "columns": columns}


# ---------------------------------------------------------------------------------------------------- shards


def _check_files(folder: Path, shards: list[dict], col: _Collector, *, checksums: bool) -> list:
    """Presence, file types, sizes, checksums, unlisted files, state.json. Returns, per shard, its memory-mapped
    bytes (what the other checks parse, so they read the file that was hashed) or None when it cannot be read.

    Files are opened through one descriptor of the folder, as regular files only: a symlink (which may point out of
    the folder), a FIFO (which would hang) or a device is a defect, never read."""
    col.ran.add("files")
    if checksums:
        col.ran.add("checksums")
    present = []
    total_bytes = 0
    try:
        dfd = fmt.open_folder(folder)
    except PackerError as e:
        col.add("files", str(e))
        return [None] * len(shards)
    try:
        for s in shards:
            try:
                fd, st = fmt.open_regular_file(s["file"], dir_fd=dfd, folder=folder)
            except PackerError as e:
                col.add("files", str(e), shard=s["file"])
                present.append(None)
                continue
            try:
                size = st.st_size
                total_bytes += size
                if size != s["bytes"]:
                    col.add("files", f"{size:,} bytes, the manifest says {s['bytes']:,}", shard=s["file"])
                try:
                    data = pa.py_buffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ)) if size else pa.py_buffer(b"")
                except (OSError, ValueError) as e:
                    col.add("files", f"cannot be read ({e})", shard=s["file"])
                    present.append(None)
                    continue
            finally:
                os.close(fd)
            if checksums:
                h = fmt.new_checksum()
                h.update(data)
                digest = h.hexdigest()
                if digest != s[fmt.SHARD_CHECKSUM]:
                    col.add("checksums", f"{fmt.CHECKSUM} {digest}, the manifest says {s[fmt.SHARD_CHECKSUM]}",
                            shard=s["file"])
            present.append(data)
        listed = {s["file"] for s in shards}
        for p in sorted(folder.glob("data-*.arrow")):
            if p.name not in listed:
                col.add("files", "a data file the manifest does not list (left by another run?)", shard=p.name)
        try:
            fd, _ = fmt.open_regular_file(fmt.HF_STATE_FILE, dir_fd=dfd, folder=folder, what="datasets state file")
            with os.fdopen(fd, "rb") as fh:
                state = json.loads(fh.read(fmt.MAX_MANIFEST_BYTES))
            names = [d["filename"] for d in state["_data_files"]]
        except (PackerError, OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            col.add("files", f"{fmt.HF_STATE_FILE} unreadable ({str(e)[:200]}); datasets.load_from_disk cannot open "
                    "the folder")
        else:
            if names != [s["file"] for s in shards]:
                col.add("files", f"{fmt.HF_STATE_FILE} lists {names!r:.200}, not the manifest's shards")
    finally:
        os.close(dfd)
    col.detail["files"] = f"{len(shards)} shard file(s), {total_bytes:,} bytes, state.json consistent"
    col.detail["checksums"] = f"{fmt.CHECKSUM} of {len(shards)} shard(s) ({total_bytes:,} bytes) match"
    return present


def _flat(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (int64 offsets starting at 0, flat values), zero-copy where it is one chunk."""
    column = table.column(name)
    arr = column.chunk(0) if column.num_chunks == 1 else pa.concat_arrays(column.chunks) if column.num_chunks \
        else pa.array([], type=column.type)
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=True)
    base = int(offsets[0])
    return offsets - base, values[base : int(offsets[-1])]


def _load_shard(data: pa.Buffer, info: dict, pack_base: int, col: _Collector) -> _Shard | None:
    name = info["file"]
    try:
        reader = pa.ipc.open_stream(data)
        if not any(reader.schema.equals(s) for s in (fmt.SCHEMA, fmt.LEGACY_SCHEMA, fmt.ALIGNED_SCHEMA)):
            col.add("schema", f"schema is {reader.schema}, not the format's {fmt.SCHEMA}".replace("\n", "; "),
                    shard=name)
            return None
        table = reader.read_all()
        for batch in table.to_batches():
            batch.validate(full=True)  # corrupted offsets must not reach numpy indexing
    except (pa.ArrowException, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        col.add("schema", f"not a readable Arrow IPC stream ({msg})", shard=name)
        return None
    for c in table.column_names:
        column = table.column(c)
        if column.null_count or any(ch.values.null_count for ch in column.chunks):
            col.add("schema", f"column {c!r} holds nulls", shard=name)
            return None
    if table.num_rows != info["rows"]:
        col.add("schema", f"{table.num_rows:,} packs, the manifest says {info['rows']:,}", shard=name)
    ids_off, ids = _flat(table, fmt.INPUT_IDS)
    lab_off, labels = _flat(table, fmt.LABELS)
    cu_off, cu = _flat(table, fmt.CU_SEQLENS)
    seq_off, seq_index = _flat(table, fmt.SEQ_INDEX)
    so_off, seq_offset = _flat(table, fmt.SEQ_OFFSET)
    if not np.array_equal(lab_off, ids_off):
        p = int(np.argmax(lab_off != ids_off)) - 1
        col.add("capacity", f"labels and input_ids differ in length in pack {pack_base + max(p, 0)}", shard=name,
                pack=pack_base + max(p, 0))
        return None
    if not np.array_equal(so_off, seq_off):
        p = int(np.argmax(so_off != seq_off)) - 1
        col.add("provenance", "seq_offset and seq_index differ in length", shard=name, pack=pack_base + max(p, 0))
        return None
    if fmt.SEQ_LENGTHS in table.column_names:  # folders written before the column lack it (format.LEGACY_SCHEMA)
        sl_off, seq_lengths = _flat(table, fmt.SEQ_LENGTHS)
        n_seq = np.diff(cu_off) - 1  # -1 for an empty cu_seqlens list, which _check_shard reports too
        bad = np.diff(sl_off) != n_seq
        if not bad.any():  # one length per sequence in every pack: compare the values
            real = np.ones(cu.shape[0], dtype=bool)
            real[cu_off[:-1]] = False  # diff against the entry before: not across two packs
            cu64 = cu.astype(np.int64)
            wrong = np.flatnonzero(seq_lengths.astype(np.int64) != (cu64 - np.concatenate([[0], cu64[:-1]]))[real])
            if wrong.shape[0]:
                bad[np.searchsorted(sl_off, wrong[0], side="right") - 1] = True
        if bad.any():
            p = int(np.argmax(bad))
            col.add("cu_seqlens", f"{fmt.SEQ_LENGTHS} disagrees with {fmt.CU_SEQLENS} in pack {pack_base + p}",
                    shard=name, pack=pack_base + p)
            return None
    return _Shard(name, pack_base, ids_off, ids, labels, cu_off, cu, seq_off, seq_index, seq_offset)




def _check_shard(sh: _Shard, cfg: dict, input_rows, col: _Collector) -> dict:
    """Capacity, cu_seqlens, labels and provenance of one shard, all vectorised.

    Returns per-sequence arrays (in shard order) for the global checks: ``pack`` (global), ``row``, ``offset``,
    ``length``, ``start`` (first token's index into the shard's flat ``ids``) and ``good`` (the sequence's pack
    has sound cu_seqlens, so its boundaries can be trusted).
    """
    capacity = cfg["capacity"]
    rows = sh.ids_off.shape[0] - 1
    packs = np.arange(rows, dtype=np.int64) + sh.pack_base
    pack_tokens = np.diff(sh.ids_off)
    n_seq = np.diff(sh.seq_off)
    n_cu = np.diff(sh.cu_off)
    at = lambda p: {"shard": sh.name, "pack": packs[p]}  # noqa: E731
    col.ran.update(("capacity", "cu_seqlens", "labels", "provenance"))

    over = (pack_tokens == 0) | (pack_tokens > capacity)
    col.many("capacity", np.flatnonzero(over),
             lambda p: (f"{int(pack_tokens[p]):,} tokens; a pack holds 1 to {capacity:,}", at(p)))

    # cu_seqlens: one entry per sequence plus one, 0 first, strictly increasing, the pack's length last
    bad_len = n_cu != n_seq + 1
    col.many("cu_seqlens", np.flatnonzero(bad_len),
             lambda p: (f"{int(n_cu[p])} entries for {int(n_seq[p])} sequences (needs {int(n_seq[p]) + 1})", at(p)))
    cu = sh.cu.astype(np.int64)
    has = n_cu > 0
    first = np.zeros(rows, dtype=np.int64)
    last = np.zeros(rows, dtype=np.int64)
    first[has] = cu[sh.cu_off[:-1][has]]
    last[has] = cu[sh.cu_off[1:][has] - 1]
    step = np.diff(cu)  # step k: entry k + 1 minus entry k
    inside = np.ones(step.shape[0], dtype=bool)
    crossing = sh.cu_off[1:-1] - 1
    inside[crossing[(crossing >= 0) & (crossing < step.shape[0])]] = False
    bad_inc = np.zeros(rows, dtype=bool)
    not_inc = np.flatnonzero(inside & (step <= 0))
    if not_inc.shape[0]:
        bad_inc[np.searchsorted(sh.cu_off, not_inc, side="right") - 1] = True
    bad_cu = has & ~bad_len & ((first != 0) | (last != pack_tokens) | bad_inc)

    def describe_cu(p):
        entries = cu[sh.cu_off[p] : sh.cu_off[p + 1]]
        shown = ", ".join(str(v) for v in entries[:12]) + (", ..." if entries.shape[0] > 12 else "")
        if first[p] != 0:
            why = "does not start at 0"
        elif last[p] != pack_tokens[p]:
            why = f"ends at {int(last[p])}, but the pack has {int(pack_tokens[p])} tokens"
        else:
            why = "is not strictly increasing"
        return f"cu_seqlens [{shown}] {why}", at(p)

    col.many("cu_seqlens", np.flatnonzero(bad_cu), describe_cu)
    sound = ~bad_len & ~bad_cu & (n_seq > 0) & ~over

    # per-sequence arrays; sequences of packs with a wrong number of cu_seqlens entries get length 0, not good
    seq_pack = np.repeat(np.arange(rows, dtype=np.int64), n_seq)
    seq_good = np.repeat(sound, n_seq)
    row_of_entry = np.repeat(np.arange(rows, dtype=np.int64), n_cu)
    is_last = np.zeros(cu.shape[0], dtype=bool)
    is_last[sh.cu_off[1:][has] - 1] = True
    take = np.repeat(~bad_len, n_cu) & ~is_last if row_of_entry.shape[0] else is_last
    seq_len_ok = np.repeat(~bad_len, n_seq)
    starts = np.zeros(seq_pack.shape[0], dtype=np.int64)
    lengths = np.zeros(seq_pack.shape[0], dtype=np.int64)
    starts[seq_len_ok] = cu[take]
    lengths[seq_len_ok] = np.append(step, 0)[take]
    start_tok = sh.ids_off[:-1][seq_pack] + starts
    k_in_pack = np.arange(seq_pack.shape[0], dtype=np.int64) - sh.seq_off[seq_pack]

    def seq_where(k):
        return {"shard": sh.name, "pack": packs[seq_pack[k]], "row": sh.seq_index[k]}

    # labels: -100 at every sequence start of a sound pack
    gs = np.flatnonzero(seq_good)
    unmasked = gs[sh.labels[start_tok[gs]] != fmt.IGNORE_INDEX]
    col.many("labels", unmasked, lambda k: (
        f"sequence {int(k_in_pack[k])} of the pack starts at token {int(starts[k])} with label "
        f"{int(sh.labels[start_tok[k]])}, not {fmt.IGNORE_INDEX}", seq_where(k)))
    _check_token_values(sh, cfg, packs, sound, start_tok[gs], col)

    # provenance
    bad_row = sh.seq_index < 0
    if _is_int(input_rows):
        bad_row |= sh.seq_index >= input_rows
    if cfg["overflow"] == "split":
        bad_off = (sh.seq_offset < 0) | (sh.seq_offset % capacity != 0)
    else:
        bad_off = sh.seq_offset != 0
    col.many("provenance", np.flatnonzero(bad_row | bad_off), lambda k: (
        f"sequence {int(k_in_pack[k])} of the pack: seq_index {int(sh.seq_index[k])} is outside the input's "
        f"{input_rows} rows" if bad_row[k] else
        f"sequence {int(k_in_pack[k])} of the pack: seq_offset {int(sh.seq_offset[k])} is impossible with "
        f"overflow {cfg['overflow']} and capacity {capacity:,}", seq_where(k)))
    return {
        "pack": packs[seq_pack],
        "k": k_in_pack,
        "row": sh.seq_index.astype(np.int64),
        "offset": sh.seq_offset.astype(np.int64),
        "length": lengths,
        "start": start_tok,
        "good": seq_good,
        "labels": int(np.count_nonzero(sh.labels != fmt.IGNORE_INDEX)),
    }


def _check_token_values(sh: _Shard, cfg: dict, packs: np.ndarray, sound: np.ndarray, seq_starts: np.ndarray,
                        col: _Collector) -> None:
    """Token ids >= 0; labels -100 or >= 0; labels equal the tokens (or -100, with a loss mask) as configured."""
    columns: Columns = cfg["columns"]

    def at_token(t, what):
        p = int(np.searchsorted(sh.ids_off, t, side="right") - 1)
        return (f"token {int(t - sh.ids_off[p])} of the pack: {what}", {"shard": sh.name, "pack": packs[p]})

    col.many("labels", np.flatnonzero(sh.ids < 0),
             lambda t: at_token(t, f"token id {int(sh.ids[t])} is negative"))
    col.many("labels", np.flatnonzero((sh.labels < 0) & (sh.labels != fmt.IGNORE_INDEX)),
             lambda t: at_token(t, f"label {int(sh.labels[t])} is negative but not {fmt.IGNORE_INDEX}"))
    if columns.labels is not None:
        return  # labels came from a column: only the input can tell whether they are right
    tok_sound = np.repeat(sound, np.diff(sh.ids_off))
    tok_sound[seq_starts] = False  # starts are checked above
    differs = sh.labels != sh.ids
    if columns.loss_mask is not None:
        differs &= sh.labels != fmt.IGNORE_INDEX
        rule = f"neither the token id nor {fmt.IGNORE_INDEX} (the config has a loss-mask column)"
    else:
        rule = "not the token id (the config has no labels column: labels are the tokens)"
    col.many("labels", np.flatnonzero(differs & tok_sound), lambda t: at_token(
        t, f"label {int(sh.labels[t])} for token id {int(sh.ids[t])}: {rule}"))


def _expected_segments(lengths: np.ndarray, capacity: int, overflow: str) -> dict:
    """The pieces the overflow policy makes of each input row, computed here independently of packer.plan.

    Returns ``first`` and ``count`` (int64 (rows,)): row ``r``'s pieces are ``first[r]:first[r] + count[r]``,
    piece ``k`` of a row starts at ``k * capacity``; ``row``, ``start``, ``length`` (int64 (pieces,)).
    """
    nonempty = lengths > 0
    long = lengths > capacity
    if overflow == "split":
        count = np.where(nonempty, (lengths + capacity - 1) // capacity, 0)
    elif overflow == "drop":
        count = (nonempty & ~long).astype(np.int64)
    else:
        count = nonempty.astype(np.int64)
    first = np.cumsum(count) - count
    row = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), count)
    start = (np.arange(row.shape[0], dtype=np.int64) - first[row]) * capacity
    length = np.minimum(lengths[row] - start, capacity)
    return {"first": first, "count": count, "row": row, "start": start, "length": length}


def _match(seqs: dict, exp: dict, n_rows: int, capacity: int, cfg: dict, inp: TokenizedInput, sh: _Shard,
           col: _Collector) -> np.ndarray:
    """Index of each packed sequence's expected piece, or -1 (and a coverage defect) where it has none."""
    row, off, length = seqs["row"], seqs["offset"], seqs["length"]
    ok = (row >= 0) & (row < n_rows) & (off >= 0) & (off % capacity == 0)
    r = np.where(ok, row, 0)
    piece = off // capacity
    ok &= piece < exp["count"][r]
    m = np.where(ok, exp["first"][r] + piece, 0)
    m[~ok] = -1
    bad_len = ok & seqs["good"] & (length != exp["length"][np.maximum(m, 0)])

    def describe(k):
        where = {"shard": sh.name, "pack": seqs["pack"][k], "row": row[k]}
        head = f"sequence {int(seqs['k'][k])} of the pack (offset {int(off[k])}, {int(length[k])} tokens): "
        if not ok[k]:
            if not 0 <= row[k] < n_rows:
                return head + f"the input has no row {int(row[k])}", where
            n = int(inp_len[row[k]])
            return head + (f"the input row has {n:,} tokens, and --overflow {cfg['overflow']} with capacity "
                           f"{capacity:,} makes no piece at offset {int(off[k])} of it"), where
        return head + f"the input's piece there has {int(exp['length'][m[k]]):,} tokens", where

    inp_len = exp["lengths"]
    col.many("coverage", np.flatnonzero(~ok | bad_len), describe)
    m[bad_len] = -1
    return m


def _compare_tokens(sh: _Shard, seqs: dict, m: np.ndarray, inp: TokenizedInput, col: _Collector) -> int:
    """Compare the tokens and labels of every matched sequence of a sound pack with the input. Returns tokens
    compared."""
    sel = np.flatnonzero(seqs["good"] & (m >= 0))
    if not sel.shape[0]:
        return 0
    mode = "labels" if inp.columns.labels else "mask" if inp.columns.loss_mask else "ids"
    row, off, n, dst0 = seqs["row"][sel], seqs["offset"][sel], seqs["length"][sel], seqs["start"][sel]
    chunk_starts = inp.chunk_row_starts()
    chunk_of = np.searchsorted(chunk_starts, row, side="right") - 1
    compared = 0
    for c in np.unique(chunk_of):
        chunk = inp.chunks[int(c)]
        idx = np.flatnonzero(chunk_of == c) if len(inp.chunks) > 1 else np.arange(sel.shape[0])
        src0 = chunk.offsets[row[idx] - chunk.row_start] + off[idx]
        cum = np.cumsum(n[idx])
        cuts = np.searchsorted(cum, np.arange(_BLOCK_TOKENS, int(cum[-1]), _BLOCK_TOKENS), side="left") + 1
        for j0, j1 in zip(np.r_[0, cuts], np.r_[cuts, idx.shape[0]]):
            if j0 >= j1:
                continue
            lens = n[idx[j0:j1]]
            excl = np.cumsum(lens) - lens
            tot = int(lens.sum())
            pos = np.arange(tot, dtype=np.int64)
            src = pos + np.repeat(src0[j0:j1] - excl, lens)
            dst = pos + np.repeat(dst0[idx[j0:j1]] - excl, lens)
            want_ids = chunk.ids[src].astype(np.int64, copy=False)
            got_ids = sh.ids[dst]
            if mode == "labels":
                want_labels = chunk.labels[src].astype(np.int64, copy=False)
            elif mode == "mask":
                want_labels = np.where(chunk.mask[src] != 0, want_ids, fmt.IGNORE_INDEX)
            else:
                want_labels = want_ids.copy()
            want_labels[excl] = fmt.IGNORE_INDEX
            got_labels = sh.labels[dst]
            for what, got, want in (("input_ids", got_ids, want_ids), ("labels", got_labels, want_labels)):
                bad = np.flatnonzero(got != want)
                if not bad.shape[0]:
                    continue
                j = np.searchsorted(excl, bad, side="right") - 1  # block sequence of each mismatch
                seq_first = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
                per_seq = np.diff(np.r_[seq_first, bad.shape[0]])

                def describe(i, what=what, got=got, want=want, bad=bad, j=j, per_seq=per_seq):
                    t = int(bad[i])
                    jj = int(j[i])
                    k = int(sel[idx[j0 + jj]])
                    path, local = inp.locate(int(seqs["row"][k]))
                    q = int(np.searchsorted(seq_first, i))
                    return (f"sequence {int(seqs['k'][k])} of the pack ({os.path.basename(path)} row {local}, offset "
                            f"{int(seqs['offset'][k])}): {what} differ at {int(per_seq[q]):,} of {int(lens[jj]):,} "
                            f"tokens, first at token {t - int(excl[jj])}: packed {int(got[t])}, input {int(want[t])}",
                            {"shard": sh.name, "pack": seqs["pack"][k], "row": seqs["row"][k]})

                col.many("tokens", bad[seq_first], lambda i: describe(int(np.searchsorted(bad, i))))
            compared += tot
    return compared


def _verify(folder: Path, manifest: dict, cfg: dict, inp: TokenizedInput | None, col: _Collector, totals: dict,
            *, checksums: bool) -> None:
    shards = manifest[fmt.MANIFEST_SHARDS]
    stats = manifest[fmt.MANIFEST_STATS]
    capacity, overflow = cfg["capacity"], cfg["overflow"]
    input_rows = manifest.get(fmt.MANIFEST_INPUT, {}).get("rows") if isinstance(
        manifest.get(fmt.MANIFEST_INPUT), dict) else None
    present = _check_files(folder, shards, col, checksums=checksums)

    exp = None
    if inp is not None:
        exp = _check_input(manifest, cfg, inp, col)

    col.ran.add("schema")
    parts = []
    matched = []
    label_tokens = 0
    compared = 0
    pack_base = 0
    all_loaded = True
    for info, data in zip(shards, present):
        sh = _load_shard(data, info, pack_base, col) if data is not None else None
        if sh is None:
            all_loaded = False
            pack_base += info["rows"]
            continue
        rows = sh.ids_off.shape[0] - 1
        seqs = _check_shard(sh, cfg, input_rows, col)
        label_tokens += seqs.pop("labels")
        n_tok, n_seq = int(sh.ids_off[-1]), int(sh.seq_off[-1])
        for key, have in (("rows", rows), ("tokens", n_tok), ("sequences", n_seq)):
            if have != info[key]:
                col.add("counts", f"{have:,} {key}, the manifest's shard entry says {info[key]:,}", shard=sh.name)
        totals["packs"] += rows
        totals["sequences"] += n_seq
        totals["tokens"] += n_tok
        if exp is not None:
            m = _match(seqs, exp, inp.n_rows, capacity, cfg, inp, sh, col)
            matched.append(m)
            compared += _compare_tokens(sh, seqs, m, inp, col)
        parts.append({k: seqs[k] for k in ("pack", "k", "row", "offset", "length", "good")})
        pack_base += rows
        log.debug("verified %s", sh.name)
    col.detail["schema"] = f"{len(shards)} shard(s) readable with the format's schema, offsets valid"
    col.detail["capacity"] = f"{totals['packs']:,} packs of 1 to {capacity:,} tokens"
    col.detail["cu_seqlens"] = f"{totals['packs']:,} packs, {totals['sequences']:,} sequence boundaries sound"
    col.detail["labels"] = f"{totals['sequences']:,} sequence starts masked, label values consistent"
    _check_alignment(manifest, cfg, present, col)
    if not parts:
        return
    seq = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _check_unique(seq, capacity, overflow, col)
    col.detail["provenance"] = (f"{totals['sequences']:,} (row, offset) pairs valid and distinct"
                                + (", split chunks contiguous" if overflow == "split" else ""))
    if all_loaded:
        _check_counts(stats, seq, totals, label_tokens, col)
    if exp is not None:
        _check_coverage(exp, np.concatenate(matched), seq, inp, cfg, col, complete=all_loaded)
        col.ran.add("tokens")
        col.detail["tokens"] = f"{compared:,} tokens and labels identical to the input's"


def _check_unique(seq: dict, capacity: int, overflow: str, col: _Collector) -> None:
    order = np.lexsort((seq["offset"], seq["row"]))
    row, off = seq["row"][order], seq["offset"][order]
    same = (row[1:] == row[:-1]) & (off[1:] == off[:-1])

    def describe(i):
        a, b = order[i], order[i + 1]
        return (f"input row {int(row[i])} offset {int(off[i])} is packed twice: pack {int(seq['pack'][a])} "
                f"(sequence {int(seq['k'][a])}) and pack {int(seq['pack'][b])} (sequence {int(seq['k'][b])})",
                {"pack": seq["pack"][b], "row": row[i]})

    col.many("provenance", np.flatnonzero(same), describe)
    if overflow != "split":
        return
    length = seq["length"][order]
    good = seq["good"][order]
    new_row = np.r_[True, row[1:] != row[:-1]]
    prev_end = np.r_[0, off[:-1] + length[:-1]]
    gap = ~new_row & (off != prev_end) & good & np.r_[False, good[:-1]] & np.r_[False, ~same]
    short = np.r_[~new_row[1:], False] & (length != capacity) & good
    lead = new_row & (off != 0)
    col.many("provenance", np.flatnonzero(gap | short | lead), lambda i: (
        f"split chunks not contiguous: chunk at offset {int(off[i])} ({int(length[i])} tokens) " + (
            "is the row's first piece" if lead[i] else "is not a full chunk but is followed by another" if short[i]
            else f"follows a chunk ending at {int(prev_end[i])}"),
        {"pack": seq["pack"][order[i]], "row": row[i]}))


def _check_counts(stats: dict, seq: dict, totals: dict, label_tokens: int, col: _Collector) -> None:
    col.ran.add("counts")
    rows_out = int(np.unique(seq["row"]).shape[0])
    want = {
        "packs": totals["packs"],
        "sequences_out": totals["sequences"],
        "tokens_out": totals["tokens"],
        "label_tokens": label_tokens,
    }
    for key, have in want.items():
        if stats.get(key) != have or isinstance(stats.get(key), bool):
            col.add("counts", f"the shards hold {have:,} {key.replace('_', ' ')}, the manifest's stats say "
                    f"{stats.get(key)!r}")
    try:
        lost_tokens = stats["tokens_dropped"] + stats["tokens_truncated"]
        if stats["tokens_in"] - lost_tokens != totals["tokens"]:
            col.add("counts", f"tokens in {stats['tokens_in']:,} - dropped {stats['tokens_dropped']:,} - truncated "
                    f"{stats['tokens_truncated']:,} != {totals['tokens']:,} tokens in the packs")
        kept_rows = stats["sequences_in"] - stats["empty_sequences_skipped"] - stats["sequences_dropped"]
        if kept_rows != rows_out:
            col.add("counts", f"sequences in {stats['sequences_in']:,} - empty {stats['empty_sequences_skipped']:,}"
                    f" - dropped {stats['sequences_dropped']:,} != {rows_out:,} input rows in the packs")
    except (KeyError, TypeError, ValueError) as e:
        col.add("counts", f"the manifest's stats lack a count or hold a non-number ({type(e).__name__}: {e})")
    col.detail["counts"] = (f"{totals['packs']:,} packs, {totals['sequences']:,} sequences, {totals['tokens']:,} "
                            f"tokens, {label_tokens:,} label tokens agree with the manifest")


def _check_input(manifest: dict, cfg: dict, inp: TokenizedInput, col: _Collector) -> dict:
    """Input rows and fingerprint against the manifest, and the statistics recomputed from the input."""

    col.ran.update(("input", "coverage"))
    lengths = inp.lengths
    info = manifest.get(fmt.MANIFEST_INPUT)
    info = info if isinstance(info, dict) else {}
    if info.get("rows") != inp.n_rows:
        col.add("input", f"the input has {inp.n_rows:,} rows, the manifest says {info.get('rows')!r}")
    files = info.get("files") if isinstance(info.get("files"), list) else []
    if len(files) == len(inp.files):
        for f, got in zip(files, inp.files):
            if isinstance(f, dict) and f.get("rows") != got.rows:
                col.add("input", f"{got.name} has {got.rows:,} rows, the manifest's {f.get('path')} had "
                        f"{f.get('rows')!r}")
    else:
        col.add("input", f"{len(inp.files)} input file(s), the manifest lists {len(files)}")
    fingerprint = input_fingerprint(inp)
    if info.get("fingerprint") != fingerprint:
        col.add("input", f"input fingerprint {fingerprint[:16]}..., the manifest has "
                f"{str(info.get('fingerprint'))[:16]}...: not the input this folder was packed from (or renamed, "
                "resized or reordered files)")
    col.detail["input"] = f"{inp.n_rows:,} rows in {len(inp.files)} file(s), fingerprint {fingerprint[:16]}... matches"

    capacity, overflow = cfg["capacity"], cfg["overflow"]
    exp = _expected_segments(lengths, capacity, overflow)
    exp["lengths"] = lengths
    long = lengths > capacity
    recomputed = {
        "sequences_in": inp.n_rows,
        "tokens_in": int(lengths.sum()),
        "empty_sequences_skipped": int(np.count_nonzero(lengths == 0)),
        "sequences_dropped": int(np.count_nonzero(long)) if overflow == "drop" else 0,
        "tokens_dropped": int(lengths[long].sum()) if overflow == "drop" else 0,
        "sequences_truncated": int(np.count_nonzero(long)) if overflow == "truncate" else 0,
        "tokens_truncated": int((lengths[long] - capacity).sum()) if overflow == "truncate" else 0,
        "sequences_split": int(np.count_nonzero(long)) if overflow == "split" else 0,
        "sequences_out": int(exp["row"].shape[0]),
        "tokens_out": int(exp["length"].sum()),
    }
    stats = manifest[fmt.MANIFEST_STATS]
    for key, want in recomputed.items():
        if stats.get(key) != want:
            col.add("coverage", f"the input gives {key.replace('_', ' ')} = {want:,} with --overflow {overflow}, "
                    f"the manifest's stats say {stats.get(key)!r}")
    exp["recomputed"] = recomputed
    return exp


def _check_coverage(exp: dict, matched: np.ndarray, seq: dict, inp: TokenizedInput, cfg: dict, col: _Collector,
                    *, complete: bool) -> None:
    hits = np.bincount(matched[matched >= 0], minlength=exp["row"].shape[0])
    missing = np.flatnonzero(hits == 0) if complete else np.zeros(0, dtype=np.int64)
    twice = np.flatnonzero(hits > 1)

    def describe(i, what):
        r = int(exp["row"][i])
        path, local = inp.locate(r)
        return (f"{os.path.basename(path)} row {local} ({int(exp['lengths'][r]):,} tokens), piece at offset "
                f"{int(exp['start'][i]):,} ({int(exp['length'][i]):,} tokens): {what}", {"row": r})

    col.many("coverage", missing, lambda i: describe(i, f"in no pack, but --overflow {cfg['overflow']} keeps it"))
    col.many("coverage", twice, lambda i: describe(i, f"in {int(hits[i])} packs"))
    rec = exp["recomputed"]
    lost = rec["sequences_dropped"] + rec["sequences_truncated"]
    col.detail["coverage"] = (
        f"{rec['sequences_in']:,} input rows: {rec['sequences_out']:,} pieces each in exactly one pack, "
        f"{rec['empty_sequences_skipped']:,} empty, {rec['sequences_dropped']:,} dropped, "
        f"{rec['sequences_truncated']:,} truncated, {rec['sequences_split']:,} split; "
        f"{rec['tokens_in']:,} tokens in = {rec['tokens_out']:,} packed + {rec['tokens_dropped']:,} dropped + "
        f"{rec['tokens_truncated']:,} truncated" + (f" ({lost:,} rows lost to overflow)" if lost else ""))


def _check_alignment(manifest: dict, cfg: dict, present: list[pa.Buffer | None], col: _Collector) -> None:
    """The ``alignment`` check (``--pad-to-multiple-of``): config, column presence, padded spans, statistics.

    Reads ``cu_seqlens`` and ``cu_seqlens_padded`` of every readable shard again from the bytes the files check
    opened safely (``present``: a buffer per shard, None for one it refused; vectorised); a shard that another
    check found unreadable is left to that check.
    """
    col.ran.add("alignment")
    add = lambda msg, **where: col.add("alignment", msg, **where)  # noqa: E731
    capacity = cfg["capacity"]
    multiple = fmt.pad_to_multiple_of(manifest)
    if multiple is not None and (not _is_int(multiple, 1) or capacity % multiple):
        add(f"config.{fmt.CONFIG_PAD_TO_MULTIPLE_OF} is {multiple!r}, not a positive integer that divides the "
            f"capacity {capacity:,}")
        return
    padded_total = real_total = packs = 0
    for info, data in zip(manifest[fmt.MANIFEST_SHARDS], present):
        name = info["file"]
        if data is None:
            continue
        try:
            table = pa.ipc.open_stream(data).read_all()
        except (pa.ArrowException, OSError):
            continue  # reported by the schema check
        if not any(table.schema.equals(s) for s in (fmt.SCHEMA, fmt.LEGACY_SCHEMA, fmt.ALIGNED_SCHEMA)):
            continue  # reported by the schema check (its names may not even decode)
        has = fmt.CU_SEQLENS_PADDED in table.schema.names
        if has != (multiple is not None):  # the rest of the schema is the schema check's (a legacy one included)
            add(f"has a {fmt.CU_SEQLENS_PADDED} column, but the config has no {fmt.CONFIG_PAD_TO_MULTIPLE_OF}" if has
                else f"has no {fmt.CU_SEQLENS_PADDED} column, but the config says {fmt.CONFIG_PAD_TO_MULTIPLE_OF} "
                f"{multiple}", shard=name)
            continue
        if multiple is None:
            continue
        if table.column(fmt.CU_SEQLENS_PADDED).null_count:
            add(f"column {fmt.CU_SEQLENS_PADDED!r} holds nulls", shard=name)
            continue
        cu_off, cu = _flat(table, fmt.CU_SEQLENS)
        pad_off, pad = _flat(table, fmt.CU_SEQLENS_PADDED)
        rows = cu_off.shape[0] - 1
        base = packs
        packs += rows
        at = lambda p: {"shard": name, "pack": base + int(p)}  # noqa: E731
        differ = np.diff(pad_off) != np.diff(cu_off)
        col.many("alignment", np.flatnonzero(differ), lambda p: (
            f"{int(pad_off[p + 1] - pad_off[p])} {fmt.CU_SEQLENS_PADDED} entries for {int(cu_off[p + 1] - cu_off[p])} "
            f"{fmt.CU_SEQLENS} entries", at(p)))
        if differ.any():
            continue
        cu64, pad64 = cu.astype(np.int64), pad.astype(np.int64)
        firsts = cu_off[:-1][np.diff(cu_off) > 0]
        # per entry step within its pack (the step across two packs' lists is not a sequence)
        real = np.diff(cu64)
        span = np.diff(pad64)
        inside = np.ones(real.shape[0], dtype=bool)
        inside[(cu_off[1:-1] - 1)[(cu_off[1:-1] - 1) < real.shape[0]]] = False
        want_span = (real + multiple - 1) // multiple * multiple
        bad_first = np.flatnonzero(pad64[firsts] != 0)
        col.many("alignment", bad_first, lambda j: (
            f"{fmt.CU_SEQLENS_PADDED} starts at {int(pad64[firsts[j]])}, not 0",
            at(np.searchsorted(cu_off, firsts[j], side="right") - 1)))
        bad = np.flatnonzero(inside & (span != want_span))
        col.many("alignment", bad, lambda e: (
            f"sequence {int(e - cu_off[np.searchsorted(cu_off, e, side='right') - 1])} of the pack has "
            f"{int(real[e]):,} tokens and a padded span of {int(span[e]):,}, not {int(want_span[e]):,} (its length "
            f"rounded up to a multiple of {multiple})", at(np.searchsorted(cu_off, e, side="right") - 1)))
        lasts = pad64[cu_off[1:][np.diff(cu_off) > 0] - 1]
        over = np.flatnonzero(lasts > capacity)
        col.many("alignment", over, lambda p: (
            f"the padded pack has {int(lasts[p]):,} tokens, more than the capacity {capacity:,}", at(p)))
        padded_total += int(lasts.sum())
        real_total += int(cu64[cu_off[1:][np.diff(cu_off) > 0] - 1].sum())
    if multiple is None:
        col.detail["alignment"] = f"not aligned (no --pad-to-multiple-of): no shard has {fmt.CU_SEQLENS_PADDED}"
        return
    stats = manifest[fmt.MANIFEST_STATS]
    if isinstance(stats, dict) and all(present) and col.counts["alignment"] == 0:
        want_stats = {"pad_to_multiple_of": multiple, "tokens_out_padded": padded_total,
                      "alignment_padding_tokens": padded_total - real_total}
        for key, have in want_stats.items():
            if stats.get(key) != have or isinstance(stats.get(key), bool):
                add(f"the shards give {key.replace('_', ' ')} = {have:,}, the manifest's stats say {stats.get(key)!r}")
    col.detail["alignment"] = (f"{packs:,} packs aligned to multiples of {multiple}: {padded_total - real_total:,} "
                               f"alignment padding tokens, every padded pack within {capacity:,}")
