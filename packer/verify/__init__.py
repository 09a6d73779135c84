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
input); :mod:`packer.verify.records` holds the report and its defects, and the typed records the checks hand each
other (:class:`~packer.verify.records.VerifyConfig`, the loaded shard, :class:`~packer.verify.records.Sequences`,
:class:`~packer.verify.records.ExpectedPieces`, :class:`~packer.verify.records.Totals`).

A new check: its name and description in :data:`CHECKS` (their order is the report's; also in
:data:`INPUT_CHECKS` if it needs the input), a ``check_*`` function in the module of what it reads, adding its
defects to the :class:`~packer.verify.records.Collector`, and its call in ``_verify``.
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
from packer.verify.against_input import check_coverage, check_input, compare_tokens, match_sequences
from packer.verify.manifest import check_files, check_manifest, check_manifest_checksum
from packer.verify.records import (
    CHECKS,
    DEFAULT_MAX_DEFECTS,
    INPUT_CHECKS,
    CheckResult,
    Collector,
    Defect,
    LoadedShard,
    Sequences,
    Totals,
    VerifyConfig,
    VerifyReport,
)
from packer.verify.shards import (
    check_alignment,
    check_counts,
    check_shard,
    check_unique,
    decode_shard,
    load_shard,
)

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
            :class:`packer.input.TokenizedInput`); its columns are the ones the manifest's config names.
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
    col = Collector(max_defects)
    totals = Totals()
    inp = None
    if inputs is not None and not isinstance(inputs, TokenizedInput):
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    manifest = _read_manifest(folder, col, allow_unsealed=allow_unsealed)
    cfg = check_manifest(manifest, col) if manifest is not None else None
    if cfg is not None:
        inp = _open_input(inputs, cfg, col)
        _verify(folder, manifest, cfg, inp, col, totals, checksums=checksums)
    seconds = time.perf_counter() - t0
    return VerifyReport(
        folder=str(folder),
        checks=_results(col, inputs_given=inputs is not None, checksums=checksums, manifest_read=manifest is not None),
        defects=tuple(d for name in CHECKS for d in col.defects[name]),
        n_defects=sum(col.counts.values()),
        packs=totals.packs,
        sequences=totals.sequences,
        tokens=totals.tokens,
        input_rows=None if inp is None else inp.n_rows,
        seconds=seconds,
    )


def _read_manifest(folder: Path, col: Collector, *, allow_unsealed: bool) -> dict | None:
    """The manifest, its own checksum checked here as a check of its own (so the other checks still run on a
    modified manifest); None (and a ``manifest`` defect) when it cannot be read at all."""
    try:
        manifest = fmt.read_manifest(folder, checksum=False)
    except PackerError as e:
        col.ran.add("manifest")
        col.add("manifest", str(e))
        return None
    check_manifest_checksum(folder, manifest, col, allow_unsealed=allow_unsealed)
    return manifest


def _open_input(inputs: TokenizedInput | list | None, cfg: VerifyConfig, col: Collector) -> TokenizedInput | None:
    """The input to compare with, opened with the manifest's columns; None without one, or (with an ``input``
    defect) when it does not match them or is damaged.

    Raises:
        PackerError: an input path does not exist (the caller's error).
    """
    if inputs is None or isinstance(inputs, TokenizedInput):
        return inputs
    files = resolve_paths(inputs)  # a path that does not exist is the caller's error: it raises
    try:
        return open_input(files, columns=cfg.columns)
    except PackerError as e:  # the input does not match the manifest's columns, or is damaged
        col.ran.add("input")
        col.add("input", f"cannot be compared: {e}")
        return None


def _results(col: Collector, *, inputs_given: bool, checksums: bool, manifest_read: bool
             ) -> tuple[CheckResult, ...]:
    """One :class:`CheckResult` per entry of :data:`CHECKS`, in its order, from what the checks collected."""
    checks = []
    for name, desc in CHECKS.items():
        n = col.counts[name]
        if name not in col.ran:
            why = "needs --input" if name in INPUT_CHECKS and not inputs_given else "not reached: see the defects above"
            if name == "checksums" and not checksums and manifest_read:
                why = "turned off"
            if name == "manifest_checksum" and name in col.detail:  # no checksum to check: say why
                why = col.detail[name]
            checks.append(CheckResult(name, desc, "skipped", why, 0))
        elif n:
            checks.append(CheckResult(name, desc, "failed", f"{n:,} defect(s)", n))
        else:
            checks.append(CheckResult(name, desc, "ok", col.detail.get(name, desc), 0))
    return tuple(checks)


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


def _verify(folder: Path, manifest: dict, cfg: VerifyConfig, inp: TokenizedInput | None, col: Collector,
            totals: Totals, *, checksums: bool) -> None:
    """Every check after the manifest's: files, input, then shard by shard (decoded once) the shard checks and the
    comparison with the input, then the checks over all shards."""
    shards = manifest[fmt.MANIFEST_SHARDS]
    capacity, overflow = cfg.capacity, cfg.overflow
    input_rows = manifest.get(fmt.MANIFEST_INPUT, {}).get("rows") if isinstance(
        manifest.get(fmt.MANIFEST_INPUT), dict) else None
    present = check_files(folder, shards, col, checksums=checksums)
    exp = check_input(manifest, cfg, inp, col) if inp is not None else None

    col.ran.add("schema")
    parts: list[Sequences] = []
    matched = []
    compared = 0
    pack_base = 0
    all_loaded = True
    decoded = []
    for info, data in zip(shards, present):
        dec = decode_shard(data, info["file"], col) if data is not None else None
        decoded.append(dec)
        sh = load_shard(dec, info, pack_base, col) if dec is not None else None
        if sh is None:
            all_loaded = False
            pack_base += info["rows"]
            continue
        seqs = check_shard(sh, cfg, input_rows, col)
        _count_shard(sh, info, totals, col)
        if exp is not None:
            m = match_sequences(seqs, exp, inp.n_rows, cfg, sh, col)
            matched.append(m)
            compared += compare_tokens(sh, seqs, m, inp, col)
        parts.append(seqs.without_start())
        pack_base += sh.ids_off.shape[0] - 1
        log.debug("verified %s", sh.name)
    col.detail["schema"] = f"{len(shards)} shard(s) readable with the format's schema, offsets valid"
    col.detail["capacity"] = f"{totals.packs:,} packs of 1 to {capacity:,} tokens"
    col.detail["cu_seqlens"] = f"{totals.packs:,} packs, {totals.sequences:,} sequence boundaries sound"
    col.detail["labels"] = f"{totals.sequences:,} sequence starts masked, label values consistent"
    check_alignment(manifest[fmt.MANIFEST_STATS], cfg, decoded, col, complete=all(present))
    if not parts:
        return
    seq = Sequences.concat(parts)
    check_unique(seq, capacity, overflow, col)
    col.detail["provenance"] = (f"{totals.sequences:,} (row, offset) pairs valid and distinct"
                                + (", split chunks contiguous" if overflow == "split" else ""))
    if all_loaded:
        check_counts(manifest[fmt.MANIFEST_STATS], seq, totals, col)
    if exp is not None:
        check_coverage(exp, np.concatenate(matched), inp, cfg, col, complete=all_loaded)
        col.ran.add("tokens")
        col.detail["tokens"] = f"{compared:,} tokens and labels identical to the input's"


def _count_shard(sh: LoadedShard, info: dict, totals: Totals, col: Collector) -> None:
    """The shard's rows, tokens and sequences against its manifest entry; added to ``totals``."""
    rows = sh.ids_off.shape[0] - 1
    n_tok, n_seq = int(sh.ids_off[-1]), int(sh.seq_off[-1])
    for key, have in (("rows", rows), ("tokens", n_tok), ("sequences", n_seq)):
        if have != info[key]:
            col.add("counts", f"{have:,} {key}, the manifest's shard entry says {info[key]:,}", shard=sh.name)
    totals.packs += rows
    totals.sequences += n_seq
    totals.tokens += n_tok
    totals.label_tokens += sh.label_tokens
