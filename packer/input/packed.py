"""A packed folder given as input, read back as its sequences to be packed again (:func:`scan_packed`)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.errors import PackerError
from packer.format import MANIFEST_FILE
from packer.input import paths
from packer.input.columns import Columns
from packer.input.formats import stage_name
from packer.input.tokenized import BatchChunks, InputFile, TokenizedInput
from packer.packed_reader import PackedReader

log = logging.getLogger(__name__)


def scan_packed(folder, *, columns: Columns = Columns(), staging: str) -> TokenizedInput:
    """A packed folder read back as tokenized input: one row per packed sequence, to be packed again.

    The folder is opened with :class:`packer.packed_reader.PackedReader` (manifest, checksum, shard sizes). Each
    shard's sequences are written to an Arrow file in ``staging`` (``input_ids`` and ``labels`` per sequence, in
    pack order), and each sequence's ``seq_index``/``seq_offset`` is kept in ``origin``, so that the new packs
    point at the rows of the *original* input. Labels are the packed ones: ``-100`` at each sequence's first token
    (the original may have trained on it; only that label can differ from the original's).

    Raises:
        PackerError: columns other than ``input_ids``/``labels`` asked for; a folder holding pieces of rows cut by
            ``--overflow split`` (their offsets would not be those a new split makes: pack the original input);
            a damaged folder.
    """
    reader = PackedReader(folder)
    if columns.detect or (columns.input_ids, columns.labels, columns.loss_mask) == (fmt.INPUT_IDS, fmt.LABELS, None):
        columns = Columns(fmt.INPUT_IDS, labels=fmt.LABELS)
    elif (columns.input_ids, columns.labels, columns.loss_mask) != (fmt.INPUT_IDS, None, None):
        raise PackerError(f"{folder}: a packed folder has the columns {fmt.INPUT_IDS!r} and {fmt.LABELS!r}; repack it "
                          "with its labels (the default) or with --no-labels")
    schema = pa.schema([fmt.SCHEMA.field(fmt.INPUT_IDS), fmt.SCHEMA.field(fmt.LABELS)])
    sfs, sinner, _ = paths.filesystem(staging)
    sfs.create_dir(sinner, recursive=True)
    files, lengths, batches, index, offset = [], [], [], [], []
    row = 0
    for f, path in enumerate(reader.shard_paths):
        read = stage_name(staging, f, str(path))
        row0, nb, pack0 = row, 0, 0
        rfs, rinner, _ = paths.filesystem(read)
        # the reader's own maps, opened through the folder with the manifest (regular files, one version)
        with rfs.open_output_stream(rinner) as sink, pa.ipc.new_file(sink, schema) as w:
            for batch in reader.record_batches(f):
                pack0 += batch.num_rows
                seqs, si, so = _sequences_of(path, batch, pack0 - batch.num_rows)
                if (so != 0).any():
                    raise PackerError(
                        f"{folder}: holds pieces of rows cut by --overflow split (seq_offset > 0); repacked as "
                        "sequences they would keep the old cut. Pack the original input (listed under 'input' in "
                        f"{MANIFEST_FILE}) with the new options")
                w.write_batch(seqs)
                batches.append((f, nb, row))
                nb += 1
                lengths.append(np.diff(seqs.column(0).offsets.to_numpy()).astype(np.int64))
                index.append(si)
                offset.append(so)
                row += seqs.num_rows
        files.append(InputFile(name=str(path), read=read, kind="arrow-file", rows=row - row0,
                               bytes=os.path.getsize(path)))
    idx = np.asarray(batches, dtype=np.int64).reshape(-1, 3)
    log.info("repacking %s: %d sequences from %d shard(s)", folder, row, len(files))
    return TokenizedInput(
        files=files, columns=columns, batches=idx, chunks=BatchChunks(files, columns, idx),
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, np.int64), staging=staging,
        origin=(np.concatenate(index) if index else np.zeros(0, np.int64),
                np.concatenate(offset) if offset else np.zeros(0, np.int64)),
        source={"folder": os.path.abspath(folder), "input": reader.manifest.get(fmt.MANIFEST_INPUT)},
    )


def _sequences_of(path, batch: pa.RecordBatch, row0: int):
    """A packed shard's record batch as one row per sequence: ``(batch of input_ids/labels, seq_index,
    seq_offset)``. Checks what the split relies on (cu_seqlens from 0 to each pack's length, strictly increasing,
    one provenance entry per sequence) and raises naming the pack otherwise."""
    ids, lab, cu = (batch.column(n) for n in (fmt.INPUT_IDS, fmt.LABELS, fmt.CU_SEQLENS))
    si, so = batch.column(fmt.SEQ_INDEX), batch.column(fmt.SEQ_OFFSET)
    ids_off = ids.offsets.to_numpy().astype(np.int64)
    lab_off = lab.offsets.to_numpy().astype(np.int64)
    cu_off = cu.offsets.to_numpy().astype(np.int64)
    n_seq = np.diff(cu_off) - 1
    cu_val = cu.values.to_numpy()[cu_off[0]:cu_off[-1]].astype(np.int64)
    local = cu_off - cu_off[0]
    pack_len = np.diff(ids_off)
    bad = (n_seq < 1) | (np.diff(si.offsets.to_numpy()) != n_seq) | (np.diff(so.offsets.to_numpy()) != n_seq) \
        | (np.diff(lab_off) != pack_len)
    ok = ~bad
    first = np.zeros_like(bad)
    last = np.zeros_like(bad)
    first[ok] = cu_val[local[:-1][ok]] != 0
    last[ok] = cu_val[local[1:][ok] - 1] != pack_len[ok]
    step = np.diff(cu_val)
    inside = np.ones(step.shape[0], dtype=bool)
    inside[(local[1:-1] - 1)[(local[1:-1] - 1) < step.shape[0]]] = False  # steps between two packs
    flat_bad = np.flatnonzero(inside & (step <= 0))
    bad |= first | last
    if flat_bad.size:
        bad[int(np.searchsorted(local, flat_bad[0], side="right")) - 1] = True
    if bad.any():
        p = int(np.argmax(bad))
        raise PackerError(f"{path}: pack {row0 + p} has inconsistent cu_seqlens, labels or provenance; the packed "
                          "folder is damaged ('packer verify' names the defects); re-pack it from its input")
    pack = np.repeat(np.arange(len(ids), dtype=np.int64), np.diff(cu_off))
    pos = ids_off[pack] + cu_val
    keep = np.ones(pos.shape[0], dtype=bool)
    keep[local[1:] - 1] = False  # each pack's closing entry
    offsets = np.append(pos[keep], ids_off[-1])
    total = int(offsets[-1] - offsets[0])
    rel = pa.array((offsets - offsets[0]).astype(np.int32))
    shift = int(lab_off[0] - ids_off[0])
    out = pa.RecordBatch.from_arrays([
        pa.ListArray.from_arrays(rel, ids.values.slice(int(offsets[0]), total)),
        pa.ListArray.from_arrays(rel, lab.values.slice(int(offsets[0]) + shift, total)),
    ], names=[fmt.INPUT_IDS, fmt.LABELS])
    s0, s1 = si.offsets[0].as_py(), si.offsets[-1].as_py()
    o0, o1 = so.offsets[0].as_py(), so.offsets[-1].as_py()
    return (out, si.values.to_numpy()[s0:s1].astype(np.int64), so.values.to_numpy()[o0:o1].astype(np.int64))
