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

The checks are split by what they read: :mod:`packer.verify.manifest` (the manifest and the files),
:mod:`packer.verify.shards` (the shards' layout and invariants) and :mod:`packer.verify.against_input` (the
input); :mod:`packer.verify.records` holds the report and its defects.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from packer import format as fmt
from packer.errors import PackerError
from packer.input import TokenizedInput, open_input, resolve_paths
from packer.verify.against_input import _check_coverage, _check_input, _compare_tokens, _match
from packer.verify.manifest import _check_files, _check_manifest, _check_manifest_checksum
from packer.verify.records import (
    CHECKS,
    DEFAULT_MAX_DEFECTS,
    INPUT_CHECKS,
    CheckResult,
    Defect,
    VerifyReport,
    _Collector,
)
from packer.verify.shards import _check_alignment, _check_counts, _check_shard, _check_unique, _load_shard

__all__ = ["CHECKS", "DEFAULT_MAX_DEFECTS", "INPUT_CHECKS", "CheckResult", "Defect", "VerifyReport",
           "reseal_manifest", "verify_packed"]

log = logging.getLogger(__name__)


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
