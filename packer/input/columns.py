"""Which input columns to read, and the checks of their types, shapes and nulls.

:class:`Columns` names them; :func:`resolve_columns` decides them once over the schemas of all files before any row
is read: the ``labels`` or ``loss_mask`` column if every file has it (:data:`DETECT`), refused if only some do; a
packed shard or text where tokens are expected is refused (:func:`text_input_hint`). Every record batch read is
checked (:func:`check_batch`: offsets, nulls, equal lengths; :func:`check_padding`: an ``attention_mask`` with
zeros means padded rows, refused), and its item buffers are read as numpy views (:func:`numpy_values`).

The scan reads no token, so the ranges of the token values (ids non-negative and within int32, labels -100 or
non-negative, a loss mask 0 or 1) are checked where the tokens are gathered: :meth:`packer.shards.Gatherer.gather`.
"""
from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.errors import ConfigError, PackerError
from packer.input.paths import DOCS_INPUT, few, packed_folder_error, is_uri, resolve_paths
from packer.input.formats import read_schema

log = logging.getLogger(__name__)

DETECT = "<detect>"
"""Default of :attr:`Columns.labels` and :attr:`Columns.loss_mask`: look for the column in the input (see
:func:`resolve_columns`). Not a possible column name of a tokenized dataset (no tokenizer pipeline writes ``<``)."""
LABELS = "labels"
LOSS_MASK = "loss_mask"
ATTENTION_MASK = "attention_mask"


def _column_name(owner: str, param: str, value, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(owner, param, value, "must be a column name (a non-empty string)"
                          + (", or None" if optional else ""))


@dataclass(frozen=True)
class Columns:
    """Which input columns to read, checked when built.

    By default packer looks for a ``labels`` column, else a ``loss_mask`` column, in every input file
    (:func:`resolve_columns`); ``packer pack`` and :func:`packer.convert.pack_dataset` decide the same way. Naming
    one of the two (or passing None) turns detection off: ``Columns(labels=None)`` trains on every token.

    Attributes:
        input_ids: the token column (a list of integers per row).
        labels: a label column of the same lengths (``-100`` = not trained on), None, or :data:`DETECT`.
        loss_mask: a 0/1 column of the same lengths (1 = trained on), None, or :data:`DETECT`. At most one of
            labels/loss_mask.

    Raises:
        ConfigError: a name that is not a non-empty string, both labels and loss_mask, a column used twice, or an
            ``attention_mask`` given as the loss mask (it marks padding, not the tokens to train on).
    """

    input_ids: str = "input_ids"
    labels: str | None = DETECT
    loss_mask: str | None = DETECT

    def __post_init__(self):
        _column_name("Columns", "input_ids", self.input_ids, optional=False)
        if (self.labels == DETECT) != (self.loss_mask == DETECT):  # one named: the other is not read
            object.__setattr__(self, "labels" if self.labels == DETECT else "loss_mask", None)
        if self.detect:
            return
        _column_name("Columns", "labels", self.labels, optional=True)
        _column_name("Columns", "loss_mask", self.loss_mask, optional=True)
        if self.labels is not None and self.loss_mask is not None:
            raise ConfigError("Columns", "loss_mask", self.loss_mask,
                              f"give either a labels column or a loss-mask column, not both (labels={self.labels!r})")
        for param in ("labels", "loss_mask"):
            if getattr(self, param) == self.input_ids:
                raise ConfigError("Columns", param, self.input_ids, "is the token column (input_ids) itself")
        if self.loss_mask == ATTENTION_MASK:
            raise ConfigError(
                "Columns", "loss_mask", self.loss_mask,
                "an attention mask marks padding, not the tokens to train on: as a loss mask it would train on "
                "every real token, prompts included. Give the column that marks trained tokens (a 0/1 loss mask, "
                f"or labels with -100); see {DOCS_INPUT}")

    @property
    def detect(self) -> bool:
        """Whether the labels or loss-mask column is still to be found in the input."""
        return self.labels == DETECT

    @property
    def names(self) -> list[str]:
        """The columns to read: ``input_ids`` first, then the labels or loss-mask column if any."""
        if self.detect:
            raise AssertionError("Columns.names before resolve_columns")
        return [self.input_ids] + [c for c in (self.labels, self.loss_mask) if c is not None]


def resolve_columns(uris: list[str], schemas: list[pa.Schema], columns: Columns) -> Columns:
    """Decide, over all input files at once, which columns to read; the same for every entry point.

    With :data:`DETECT` (the default), a ``labels`` column is used if every file has one, else a ``loss_mask``
    column if every file has one, else none (every token is trained on). A column that some files have and others
    lack, or that is in every file with both names present, is refused: the files would mean different things.
    Named columns must be in every file. Every column read must have one type kind (integer, or boolean for a
    loss mask) across the files; a packed shard (``cu_seqlens``) or text where tokens are expected is refused.

    Returns:
        A :class:`Columns` without :data:`DETECT`.

    Raises:
        PackerError: naming the files, the column and the option that settles it.
    """
    for uri, schema in zip(uris, schemas):
        if fmt.CU_SEQLENS in schema.names and fmt.SEQ_INDEX in schema.names:
            folder = posixpath.dirname(uri) if is_uri(uri) else os.path.dirname(uri)
            raise packed_folder_error(folder or uri)
        hint = text_input_hint(uri, schema, columns.input_ids)
        if hint:
            raise PackerError(hint)
    if columns.detect:
        found = {}
        for name in (LABELS, LOSS_MASK):
            have = [name in s.names for s in schemas]
            if any(have) and not all(have):
                raise PackerError(_disagree(name, uris, have))
            found[name] = all(have) and bool(schemas)
        if found[LABELS] and found[LOSS_MASK]:
            raise PackerError(f"{uris[0]}: has both a {LABELS!r} and a {LOSS_MASK!r} column; choose one with "
                              "--labels-column or --loss-mask-column (labels=/loss_mask= in Python)")
        columns = Columns(columns.input_ids, labels=LABELS if found[LABELS] else None,
                          loss_mask=LOSS_MASK if found[LOSS_MASK] else None)
        if columns.labels or columns.loss_mask:
            log.debug("reading %r as the %s column (found in every input file); --no-labels trains on every token",
                     columns.labels or columns.loss_mask, "labels" if columns.labels else "loss-mask")
    for name in columns.names:
        missing = [u for u, s in zip(uris, schemas) if name not in s.names]
        if missing:
            have = schemas[uris.index(missing[0])].names
            raise PackerError(
                f"{few(missing)}: no column {name!r} (columns: {', '.join(have) or 'none'}); name the right one "
                "with --input-column/--labels-column/--loss-mask-column"
                + (f" (in {len(uris) - len(missing)} other input files it exists)"
                   if len(missing) < len(uris) else ""))
        kinds = {}
        for uri, schema in zip(uris, schemas):
            typ = schema.field(name).type
            _check_list_type(uri, name, typ, allow_bool=(name == columns.loss_mask))
            kinds.setdefault(_kind(typ), []).append(uri)
        if len(kinds) > 1:
            raise PackerError(f"column {name!r} holds integers in {few(kinds['int'])} but booleans in "
                              f"{few(kinds['bool'])}; give it one type in every file")
    return columns


def has_column(inputs, name: str, *, split: str | None = None) -> bool:
    """Whether every input file has a column ``name`` (reads their schemas only).

    Raises:
        PackerError: some files have it and others do not (the files named).
    """
    uris = resolve_paths(inputs, split=split)
    have = [name in read_schema(u).names for u in uris]
    if any(have) and not all(have):
        raise PackerError(_disagree(name, uris, have))
    return all(have)


def _disagree(name: str, uris: list[str], have: list[bool]) -> str:
    yes = [u for u, h in zip(uris, have) if h]
    no = [u for u, h in zip(uris, have) if not h]
    return (f"column {name!r} is in {len(yes)} of {len(uris)} input files ({few(yes)}) but not in {few(no)}; "
            "the files would be trained differently. Give every file the column, or choose for all of them: "
            "--labels-column/--loss-mask-column NAME (labels=/loss_mask= in Python) to use it (files without it are "
            "refused), --no-labels (labels=None) to train on every token")


def text_input_hint(uri: str, schema: pa.Schema, input_ids: str) -> str | None:
    """The message for text where token ids were expected, or None."""
    text = [f.name for f in schema if _is_text(f.type)]
    typ = schema.field(input_ids).type if input_ids in schema.names else None
    if (typ is not None and _is_text(typ)) or (typ is None and text):
        col = input_ids if typ is not None else text[0]
        return (f"{uri}: column {col!r} holds text; packer takes token ids (a list of integers per row, column "
                f"{input_ids!r}). Tokenize first, for example with datasets.map and a tokenizer, then pack: see the "
                f"tokenize-then-pack example in {DOCS_INPUT}")
    return None


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _kind(typ: pa.DataType) -> str:
    return "bool" if pa.types.is_boolean(typ.value_type) else "int"


def _check_list_type(uri: str, name: str, typ: pa.DataType, *, allow_bool: bool = False) -> None:
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise PackerError(f"{uri}: column {name!r} is {typ}, not a list of integers (one token list per row)")
    vt = typ.value_type
    if not (pa.types.is_integer(vt) or (allow_bool and pa.types.is_boolean(vt))):
        raise PackerError(f"{uri}: column {name!r} is {typ}; its items must be integers, not {vt}")


def check_padding(uri: str, batch: pa.RecordBatch, row0: int, input_ids: str) -> None:
    """Refuse a batch whose ``attention_mask`` has zeros (padded rows, whose pad tokens would be packed as text),
    or does not read as a mask of its rows (another length than the tokens, values other than 0 and 1): then the
    tokens may not be what they seem either."""
    col = batch.column(ATTENTION_MASK)
    refuse = f"{uri}: column {ATTENTION_MASK!r}"
    fix = "re-tokenize, or drop the column"
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise PackerError(f"{refuse} is {col.type}, not a list per row as an attention mask is; {fix}")
    values = col.values
    if not (pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)
            or pa.types.is_floating(values.type)):
        raise PackerError(f"{refuse} holds {values.type}, not 0/1 numbers; {fix}")
    if col.null_count or values.null_count:
        rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)) if col.null_count else None
        where = f"row {row0 + int(rows[0])} is null" if rows is not None and rows.shape[0] else "it holds null values"
        raise PackerError(f"{refuse}: {where}, so which tokens are padding is unknown; {fix}")
    offsets = col.offsets.to_numpy()
    ids = batch.column(input_ids)
    if hasattr(ids, "offsets"):  # a list column (its type is checked elsewhere)
        wrong = np.flatnonzero(np.diff(offsets) != np.diff(ids.offsets.to_numpy()))
        if wrong.shape[0]:
            r = int(wrong[0])
            raise PackerError(
                f"{uri}: column {ATTENTION_MASK!r} row {row0 + r} has {int(offsets[r + 1] - offsets[r]):,} entries "
                f"for {int(ids.offsets[r + 1].as_py() - ids.offsets[r].as_py()):,} {input_ids}; an attention mask "
                "has one entry per token: re-tokenize, or drop the column")
    m = values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    if not pa.types.is_boolean(values.type) and ((m != 0) & (m != 1)).any():
        bad = int(np.flatnonzero((m != 0) & (m != 1))[0])
        r = int(np.searchsorted(offsets[1:] - offsets[0], bad, side="right"))
        raise PackerError(f"{uri}: column {ATTENTION_MASK!r} row {row0 + r} holds {m[bad]}; an attention mask "
                          "holds 0 (padding) and 1 (a token): re-tokenize, or drop the column")
    if m.all():
        return
    zero = m == 0
    rows = np.searchsorted(offsets[1:] - offsets[0], np.flatnonzero(zero), side="right")
    r = int(rows[0])
    mask = np.asarray(m[offsets[r] - offsets[0]:offsets[r + 1] - offsets[0]]) != 0
    ones = np.flatnonzero(mask)
    if ones.size == 0:
        how = "all padding"
    elif ones[-1] - ones[0] + 1 != ones.size:
        how = "a mask with gaps, which is not padding packer can strip"
    else:
        how = "left-padded" if ones[0] > 0 else "right-padded"
    raise PackerError(
        f"{uri}: column {ATTENTION_MASK!r} is 0 at {int(zero.sum()):,} of {m.size:,} tokens in rows {row0}..."
        f"{row0 + len(col) - 1} (row {row0 + r} is {how}): the rows are padded, and packer would pack the pad "
        "tokens as text. Tokenize without padding (padding=False; packing replaces it), or drop the pad tokens "
        f"first: see {DOCS_INPUT}")


def check_batch(uri: str, batch: pa.RecordBatch, names: list[str], row0: int) -> np.ndarray:
    """Validate one batch (offsets, nulls, equal lengths) and return its row lengths, int64 (rows,).

    ``row0`` is the batch's first row inside the file (for messages).
    """
    # Full validation checks every list offset against its values buffer (about 10 us per 1,000-row batch of the
    # reference set): without it a corrupted offset would send the gather kernel past the memory map (raises
    # ArrowInvalid, reported as a corrupted file).
    batch.validate(full=True)
    lengths = None
    for name in names:
        col = batch.column(name)
        if col.null_count:
            bad = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise PackerError(f"{uri}: column {name!r} row {row0 + bad} is null; drop or fill null rows first")
        if col.values.null_count:
            numpy_values(uri, name, col, row0)  # raises naming the row
        n = np.diff(col.offsets.to_numpy()).astype(np.int64, copy=False)
        if lengths is None:
            lengths = n
        elif not np.array_equal(lengths, n):
            bad = int(np.argmax(lengths != n))
            raise PackerError(
                f"{uri}: row {row0 + bad} has {int(lengths[bad])} {names[0]} but {int(n[bad])} {name}; "
                "the two columns must have the same length in every row"
            )
    return lengths


def numpy_values(uri: str, name: str, arr: pa.Array, row_start: int) -> np.ndarray:
    """The list array's item buffer as numpy (zero-copy; bool items as uint8), indexed by ``arr.offsets``."""
    values = arr.values
    if values.null_count:
        # the row holding the first null item, for the message (arr.offsets index arr.values)
        item = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        offsets = arr.offsets.to_numpy()
        row = int(np.searchsorted(offsets, item, side="right")) - 1
        if 0 <= row < len(arr) and offsets[row] <= item < offsets[row + 1]:
            raise PackerError(f"{uri}: column {name!r} row {row_start + row} holds a null token; fix or drop it")
        values = values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if values.null_count:  # pragma: no cover - the search above finds it
            raise PackerError(f"{uri}: column {name!r} holds a null token; fix or drop it")
        dtype = np.uint8 if pa.types.is_boolean(values.type) else values.type.to_pandas_dtype()
        return np.concatenate([np.zeros(int(offsets[0]), dtype), values.to_numpy()])
    if pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.uint8)
    return values.to_numpy(zero_copy_only=True)
