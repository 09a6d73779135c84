"""Reading tokenized input: the one input layer (discovery, sniffing, validation, record batches as numpy views).

Accepted inputs, given as one or many paths (a path may be a glob) or as URIs that :mod:`pyarrow.fs` supports
(``s3://bucket/prefix``, ``gs://``, ``hdfs://``, ``file://``; all inputs of one kind):

* a ``datasets.Dataset.save_to_disk`` folder (``state.json`` lists its ``.arrow`` shards, in order);
* ``.arrow`` files in the Arrow IPC *file* or *stream* format (told apart by their magic bytes);
* ``.parquet`` files;
* folders holding any of the above (searched recursively, in sorted path order; hidden folders and packed
  folders, those with a ``packer.json``, are skipped). A folder must hold one dataset: several ``save_to_disk``
  folders, ``DatasetDict`` splits at any depth, or files named by split (``train/``, ``test-0000.parquet``) are
  refused with their names unless ``split`` picks one (:func:`resolve_paths`);
* a packed folder given alone, read back as its sequences to be packed again (:func:`scan_packed`).

The columns are decided once over the schemas of all files before any row is read (:func:`resolve_columns`): the
``labels`` or ``loss_mask`` column if every file has it (:data:`DETECT`), refused if only some do. Text, padded rows
(an ``attention_mask`` with zeros) and packed shards among tokenized files are refused with what to do
(``docs/input.md``).

:func:`scan_inputs` reads every input once, one record batch at a time: it validates the schema and every batch
(types, nulls, equal column lengths; each message names the file, column and row, and the fix) and keeps only
per-row lengths (from the Arrow list offsets; no token is read) and the record-batch layout, a
:class:`TokenizedInput`. Its ``chunks`` open the batches on demand (:class:`BatchChunks`): memory-mapped for local
Arrow IPC files, so only the pages holding the gathered sequences are read; through a pyarrow filesystem
otherwise, one record batch at a time. Nothing holds all inputs at once:

* ``packer pack`` scans with a staging folder: Parquet is compressed and cannot be memory-mapped, so the scan
  decodes it one row group at a time and writes the needed columns to an Arrow IPC file there, which shard jobs
  (in any process) read like any Arrow input. Memory stays bounded by one row group; the cost is one write.
  Remote inputs (object stores) are staged too when the staging folder is local: under a global plan nearly every
  shard job needs nearly every record batch, so reading them remotely would transfer the data once per shard;
  staged, it crosses the network once, during the scan, and the jobs memory-map the local copy.
* ``packer report`` needs the lengths alone.
* ``packer verify --input`` (:func:`open_input`) revisits the input's batches once per packed shard, so it keeps
  the scanned batches: views of the memory maps for Arrow IPC (no heap), decoded in memory for Parquet.

Rows are numbered globally: the rows of the first file, then the second, and so on.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from packer import format as fmt
from packer.errors import ConfigError, PackerError
from packer.format import MANIFEST_FILE
from packer.packed_reader import PackedReader

log = logging.getLogger(__name__)

ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_MAGIC = b"PAR1"
ARROW_STREAM_CONTINUATION = b"\xff\xff\xff\xff"
ARROW_STREAM_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
INPUT_SUFFIXES = (".arrow", ".parquet", ".parq")
TEXT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".csv", ".tsv", ".txt")


DETECT = "<detect>"
"""Default of :attr:`Columns.labels` and :attr:`Columns.loss_mask`: look for the column in the input (see
:func:`resolve_columns`). Not a possible column name of a tokenized dataset (no tokenizer pipeline writes ``<``)."""
LABELS = "labels"
LOSS_MASK = "loss_mask"
ATTENTION_MASK = "attention_mask"
DOCS_INPUT = "docs/input.md"
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval", "evaluation")
"""Names that mark a split of a dataset when a folder or a file name is one of them (the Hugging Face hub's
``data/train-00000-of-00002.parquet``, a ``DatasetDict`` folder's ``train/``)."""


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


@dataclass
class Chunk:
    """One contiguous run of rows whose token buffers are single numpy arrays (an Arrow record batch).

    ``offsets`` (int64, rows + 1) index ``ids`` (and ``labels``/``mask``, which share the same offsets).
    """

    file: str
    row_start: int
    offsets: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return self.offsets.shape[0] - 1


@dataclass(frozen=True)
class InputFile:
    """One input file as a shard job sees it (picklable, small).

    Attributes:
        name: the path or URI as given (for messages and the manifest).
        read: the path or URI to read batches from: ``name``, or the staged Arrow file of a Parquet input.
        kind: ``arrow-file``, ``arrow-stream`` or ``parquet`` (of ``read``).
        rows: rows in the file.
        bytes: size of ``name`` in bytes.
    """

    name: str
    read: str
    kind: str
    rows: int
    bytes: int


@dataclass
class TokenizedInput:
    """Tokenized rows from one or many files: what the scan measured, and their record batches as chunks.

    Attributes:
        files: the inputs, in row order.
        columns: the columns read.
        batches: int64 (n_chunks, 3): ``(file, batch, first global row)`` of every non-empty record batch, in row
            order (in a shard job: of the batches the job reads).
        chunks: chunk ``c`` is batch ``batches[c]`` as a :class:`Chunk` (a list, or :class:`BatchChunks`).
        lengths: int64 (n_rows,), tokens per row; None in a shard job, which gets its sequences from the plan.
        staging: the staging folder holding converted Parquet inputs, or None.
        origin: for a packed folder read back (:func:`scan_packed`): int64 (n_rows,) arrays ``(seq_index,
            seq_offset)``, each sequence's row and offset in the *original* input; None otherwise.
        source: for a packed folder read back: ``{"folder": ..., "input": its manifest's input}``.
    """

    files: list[InputFile]
    columns: Columns
    batches: np.ndarray
    chunks: Sequence[Chunk]
    lengths: np.ndarray | None = None
    staging: str | None = None
    origin: tuple[np.ndarray, np.ndarray] | None = None
    source: dict | None = None

    @property
    def n_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def file_rows(self) -> np.ndarray:
        return np.asarray([f.rows for f in self.files], dtype=np.int64)

    @property
    def file_bytes(self) -> np.ndarray:
        return np.asarray([f.bytes for f in self.files], dtype=np.int64)

    def chunk_row_starts(self) -> np.ndarray:
        """int64 (n_chunks + 1,): chunk ``c`` holds global rows ``[starts[c], starts[c + 1])``."""
        return np.append(self.batches[:, 2], self.n_rows).astype(np.int64)

    def locate(self, row: int) -> tuple[str, int]:
        """The name of the file holding global ``row`` and the row's index inside that file."""
        ends = np.cumsum(self.file_rows)
        f = int(np.searchsorted(ends, row, side="right"))
        return self.files[f].name, int(row - (ends[f] - self.files[f].rows))


# ---------------------------------------------------------------------------------------------- discovery


def is_uri(path) -> bool:
    """Whether ``path`` names a location through a URI scheme (``s3://...``) rather than a local path."""
    return "://" in str(path)


def is_local(path) -> bool:
    """Whether ``path`` is on the local filesystem (a plain path or a ``file://`` URI)."""
    return not is_uri(path) or str(path).startswith("file://")


def filesystem(path) -> tuple[pafs.FileSystem, str, bool]:
    """``(filesystem, path inside it, is_local)`` for a local path or a URI pyarrow supports."""
    p = str(path)
    if not is_uri(p):
        return pafs.LocalFileSystem(), os.path.abspath(p), True
    try:
        fs, inner = pafs.FileSystem.from_uri(p)
    except (pa.ArrowException, ValueError) as e:
        raise PackerError(f"{p}: pyarrow cannot open this URI ({e}); use a local path or a supported scheme") from None
    return fs, inner, isinstance(fs, pafs.LocalFileSystem)


def resolve_paths(paths, *, split: str | None = None) -> list[str]:
    """Expand folders, globs, ``save_to_disk`` folders and folder URIs into an ordered list of data files.

    A folder must hold one dataset: a folder holding several (the splits of a ``DatasetDict`` at any depth,
    several ``save_to_disk`` folders, or files whose folder or file name is a split name such as ``train/`` and
    ``test/``) is refused with their names, unless ``split`` picks one of them by its split name. Files and globs
    are taken as given.

    Args:
        paths: a path or paths (files, folders, globs) or URIs.
        split: the split to take from folders that hold several (``--split``).

    Raises:
        PackerError: a missing path, a folder with no data or several datasets, a packed folder, or a ``split``
            that no folder holds.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise PackerError("no input given; pass one or more tokenized .arrow/.parquet files or folders")
    if split is not None and (not isinstance(split, str) or not split):
        raise ConfigError("pack_dataset", "split", split, "must be the name of a split (a non-empty string)")
    uris = [p for p in paths if is_uri(p)]
    if uris and len(uris) != len(paths):
        raise PackerError("mix of local paths and URIs; pass inputs of one kind (or file:// URIs for local files)")
    files: list[str] = []
    for p in paths:
        if uris:
            files.extend(_expand_uri(p, split))
        elif any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise PackerError(f"{p}: the pattern matches no file")
            for m in matches:
                files.extend(_expand(Path(m), split))
        else:
            files.extend(_expand(Path(p), split))
    seen = set()
    for f in files:
        if f in seen:
            raise PackerError(f"{f}: given twice (directly or through a folder or pattern); pass each input once")
        seen.add(f)
    return files


def _packed_folder_error(path) -> PackerError:
    return PackerError(
        f"{path}: is a packed folder (it has {MANIFEST_FILE}), or a shard of one; read as tokenized rows, each pack "
        "would become one sequence and its boundaries be lost. To repack it, give the folder itself as the only "
        "input of 'packer pack' (or pack_dataset); or pack the original input, listed under 'input' in "
        f"{MANIFEST_FILE}")


def _split_of(rel: str) -> str | None:
    """The split a data file belongs to, from its relative path: a folder named like a split, else a file name
    that starts with one (``train-00000-of-00002.parquet``, ``test.arrow``)."""
    parts = rel.split("/")
    for part in parts[:-1]:
        if part.lower() in SPLIT_NAMES:
            return part
    stem = parts[-1].split(".")[0]
    head = stem.split("-")[0].split("_")[0]
    return head if head.lower() in SPLIT_NAMES else None


def _group_datasets(rel_files: list[str]) -> list[tuple[str, str | None, list[str], str | None]]:
    """Split a folder's listing (relative POSIX paths of its data files and ``state.json`` files) into its
    datasets: ``(name, split, data files, save_to_disk folder or None)``, one per ``save_to_disk`` folder, and one
    per split of the other files (those of no split form one dataset). Empty datasets are left out."""
    roots = sorted({posixpath.dirname(f) for f in rel_files if posixpath.basename(f) == "state.json"})
    data = sorted(f for f in rel_files if f.endswith(INPUT_SUFFIXES))
    out: list[tuple[str, str | None, list[str], str | None]] = []
    claimed: set[str] = set()
    # innermost first: a state.json inside another dataset's folder is its own dataset
    for root in sorted(roots, key=lambda r: -r.count("/")):
        prefix = root + "/" if root else ""
        mine = [f for f in data if f.startswith(prefix) and f not in claimed]
        claimed.update(mine)
        out.append((root or ".", posixpath.basename(root) or None, mine, root))
    loose: dict[str | None, list[str]] = {}
    for f in data:
        if f not in claimed:
            loose.setdefault(_split_of(f), []).append(f)
    for key, fs in loose.items():
        out.append((key if key is not None else "files of no split", key, fs, None))
    return sorted((d for d in out if d[2]), key=lambda d: d[0])


def _pick(where, datasets: list, split: str | None) -> tuple:
    """The one dataset of a folder (or its ``split``) from :func:`_group_datasets`, or a PackerError naming all."""
    names = ", ".join(d[0] for d in datasets)
    if split is not None:
        chosen = [d for d in datasets if d[1] == split]
        if not chosen:
            raise PackerError(f"{where}: holds no split {split!r} (datasets found: {names}); pass one of their "
                              "split names to --split, or the path of the one to pack")
        if len(chosen) > 1:
            raise PackerError(f"{where}: {len(chosen)} datasets have a split {split!r}: "
                              f"{', '.join(d[0] for d in chosen)}; pass the path of the one to pack")
        return chosen[0]
    if len(datasets) > 1:
        raise PackerError(
            f"{where}: holds {len(datasets)} datasets ({names}); packing them together would mix them (test rows "
            "into training). Pass the path of the one to pack, or --split NAME (split= in Python) to take one split; "
            "to pack several of them as one dataset on purpose, pass each of their paths")
    return datasets[0]


def _state_files(path: Path) -> list[str]:
    """The data files of a ``save_to_disk`` folder, in the order its ``state.json`` lists them."""
    state = path / "state.json"
    try:
        data_files = json.loads(state.read_text())["_data_files"]
        names = [d["filename"] for d in data_files]
    except (ValueError, KeyError, TypeError) as e:
        raise PackerError(f"{state}: not a readable datasets state.json ({e}); re-save the dataset") from None
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise PackerError(f"{path}: state.json lists {missing[0]}, which is missing; re-save the dataset")
    return [str(path / n) for n in names]


def _expand(path: Path, split: str | None = None) -> list[str]:
    if not path.exists():
        raise PackerError(f"{path}: no such file or folder")
    if path.is_file():
        if split is not None:
            raise PackerError(f"{path}: is a file; --split (split=) picks a split of a folder that holds several")
        return [str(path)]
    if (path / MANIFEST_FILE).is_file():
        raise _packed_folder_error(path)
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if split is not None and split in splits:
            return _expand(path / split)
        raise PackerError(
            f"{path}: is a DatasetDict folder; pass one split folder instead (one of: {', '.join(splits)}), "
            "or --split NAME (split= in Python)"
            + (f"; it has no split {split!r}" if split is not None else "")
        )
    if (path / "state.json").is_file():
        if split is not None and path.name != split:
            raise PackerError(f"{path}: is one dataset (a save_to_disk folder), not split {split!r}; drop --split "
                              "or pass the folder of that split")
        return _state_files(path)
    listing: list[str] = []
    for root, dirs, names in os.walk(path):
        # skip hidden folders (temporary outputs) and packed folders (a previous output next to its input)
        packed = [d for d in dirs if os.path.exists(os.path.join(root, d, MANIFEST_FILE))]
        for d in packed:
            log.info("skipping %s: a packed folder", os.path.join(root, d))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in packed)
        rel = os.path.relpath(root, path).replace(os.sep, "/")
        rel = "" if rel == "." else rel + "/"
        listing += [rel + n for n in names if not n.startswith(".")
                    and (n.endswith(INPUT_SUFFIXES) or n == "state.json")]
    datasets = _group_datasets(listing)
    if not datasets:
        text = next((os.path.join(r, n) for r, _, ns in os.walk(path) for n in ns if n.lower().endswith(TEXT_SUFFIXES)
                     and n not in ("state.json", "dataset_info.json", "dataset_dict.json")), None)
        raise PackerError(f"{path}: the folder holds no .arrow or .parquet file" + (
            f" (it holds text such as {os.path.basename(text)}: packer takes token ids; see the tokenize-then-pack "
            f"example in {DOCS_INPUT})" if text else ""))
    _, _, files, root = _pick(path, datasets, split)
    if root is not None:
        return _state_files(path / root)
    folders = sorted({f.split("/")[0] for f in files if "/" in f})
    if len(folders) > 1:  # a layout packer cannot tell from several datasets: say what is merged
        log.info("%s: packing the files of %d folders as one dataset (%s); pass a folder to pack it alone", path,
                 len(folders), _few(folders))
    return [str(path / f) for f in files]


def _expand_uri(uri: str, split: str | None = None) -> list[str]:
    """A file URI, or every Arrow/Parquet file below a folder URI, skipped, grouped and ordered as for local
    folders (a ``save_to_disk`` folder's files in name order)."""
    fs, inner, _ = filesystem(uri)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise PackerError(f"{uri}: no such file or folder")
    if info.type == pafs.FileType.File:
        if split is not None:
            raise PackerError(f"{uri}: is a file; --split (split=) picks a split of a folder that holds several")
        return [uri]
    root = inner.rstrip("/")
    listing = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    if any(i.path == root + "/" + MANIFEST_FILE for i in listing):
        raise _packed_folder_error(uri)
    packed = [posixpath.dirname(i.path) + "/" for i in listing if posixpath.basename(i.path) == MANIFEST_FILE]
    rel = sorted(
        i.path[len(root) + 1:] for i in listing
        if i.type == pafs.FileType.File
        and (i.path.endswith(INPUT_SUFFIXES) or posixpath.basename(i.path) == "state.json")
        and not any(part.startswith(".") for part in i.path[len(root):].split("/"))
        and not any(i.path.startswith(d) for d in packed)
    )
    datasets = _group_datasets(rel)
    if not datasets:
        raise PackerError(f"{uri}: the folder holds no .arrow or .parquet file")
    return [uri.rstrip("/") + "/" + f for f in _pick(uri, datasets, split)[2]]


# ---------------------------------------------------------------------------------------------- one file


def _sniff(uri: str) -> str:
    """``arrow-file``, ``arrow-stream`` or ``parquet``, from the file's first bytes."""
    fs, inner, local = filesystem(uri)
    try:
        with (open(inner, "rb") if local else fs.open_input_file(inner)) as fh:
            head = fh.read(8)
    except OSError as e:
        raise PackerError(f"{uri}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise PackerError(f"{uri}: the file is empty; remove it from the input")
    if head.startswith(ARROW_FILE_MAGIC):
        return "arrow-file"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ARROW_STREAM_CONTINUATION) or uri.endswith(".arrow"):
        return "arrow-stream"
    if uri.lower().endswith(TEXT_SUFFIXES) or head.lstrip()[:1] in (b"{", b"["):
        raise PackerError(f"{uri}: is text (JSON, CSV or plain text), not Arrow or Parquet; packer takes token ids. "
                          "Tokenize first, for example with datasets.map and a tokenizer, then pack: see the "
                          f"tokenize-then-pack example in {DOCS_INPUT}")
    raise PackerError(f"{uri}: neither Arrow IPC nor Parquet (unknown magic bytes {head[:4]!r})")


def _check_stream_end(uri: str) -> None:
    """An Arrow IPC stream cut at a record-batch boundary still parses, minus its last batches; only the
    end-of-stream marker that every writer's ``close()`` appends tells it from a complete one."""
    fs, inner, _ = filesystem(uri)
    size = fs.get_file_info(inner).size
    if size < len(ARROW_STREAM_EOS):
        raise PackerError(f"{uri}: too short to be an Arrow IPC stream; the file is truncated")
    with fs.open_input_file(inner) as fh:
        tail = fh.read_at(len(ARROW_STREAM_EOS), size - len(ARROW_STREAM_EOS))
    if tail != ARROW_STREAM_EOS:
        raise PackerError(
            f"{uri}: the Arrow IPC stream has no end-of-stream marker, so it is truncated (or its writer was "
            "never closed); re-create the file"
        )


def _open_source(uri: str):
    fs, inner, local = filesystem(uri)
    return pa.memory_map(inner, "r") if local else fs.open_input_file(inner)


def _open_batches(uri: str, kind: str, names: list[str]):
    """(schema, iterator over record batches) of one file; the batches are read as the iterator advances.

    Parquet batches are those of each row group decoded in turn (only the columns ``names``).
    """
    if kind == "parquet":
        fs, inner, local = filesystem(uri)
        pf = pq.ParquetFile(inner if local else fs.open_input_file(inner), memory_map=local)

        def row_groups():
            for g in range(pf.num_row_groups):
                yield from pf.read_row_group(g, columns=names, use_threads=True).select(names).to_batches()

        return pf.schema_arrow, row_groups()
    source = _open_source(uri)
    if kind == "arrow-file":
        r = pa.ipc.open_file(source)
        return r.schema, (r.get_batch(i) for i in range(r.num_record_batches))
    r = pa.ipc.open_stream(source)
    return r.schema, iter(r)


def _unreadable(uri: str, kind: str, e: Exception) -> PackerError:
    what = "Parquet" if kind == "parquet" else "Arrow IPC"
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return PackerError(f"{uri}: cannot be read as {what} ({msg}); the file may be truncated or corrupted")


def read_schema(uri: str, kind: str | None = None) -> pa.Schema:
    """The Arrow schema of one input file: its footer (Parquet, Arrow file) or first message (Arrow stream); no row
    is read, and no record batch is opened."""
    kind = kind or _sniff(uri)
    fs, inner, _ = filesystem(uri)
    try:
        with fs.open_input_file(inner) as fh:
            if kind == "parquet":
                return pq.read_schema(fh)
            return (pa.ipc.open_file(fh) if kind == "arrow-file" else pa.ipc.open_stream(fh)).schema
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _unreadable(uri, kind, e) from None


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


# ---------------------------------------------------------------------------------------------- validation


def _check_list_type(uri: str, name: str, typ: pa.DataType, *, allow_bool: bool = False) -> None:
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise PackerError(f"{uri}: column {name!r} is {typ}, not a list of integers (one token list per row)")
    vt = typ.value_type
    if not (pa.types.is_integer(vt) or (allow_bool and pa.types.is_boolean(vt))):
        raise PackerError(f"{uri}: column {name!r} is {typ}; its items must be integers, not {vt}")


def _check_batch(uri: str, batch: pa.RecordBatch, names: list[str], row0: int) -> np.ndarray:
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
            _numpy_values(uri, name, col, row0)  # raises naming the row
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


def _numpy_values(uri: str, name: str, arr: pa.Array, row_start: int) -> np.ndarray:
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


def _to_chunk(name: str, columns: Columns, batch: pa.RecordBatch, row_start: int, local_row: int) -> Chunk:
    """A validated record batch as a :class:`Chunk` (numpy views of its buffers)."""
    ids = batch.column(columns.input_ids)
    offsets = ids.offsets.to_numpy().astype(np.int64, copy=False)
    chunk = Chunk(file=name, row_start=row_start, offsets=offsets,
                  ids=_numpy_values(name, columns.input_ids, ids, local_row))
    other = columns.labels or columns.loss_mask
    if other is not None:
        o = batch.column(other)
        vals = _numpy_values(name, other, o, local_row)
        # re-base so that the ids offsets index the other column too (the scan checked equal lengths)
        shift = int(o.offsets[0].as_py() - offsets[0])
        if shift:
            vals = vals[shift:] if shift > 0 else np.concatenate([np.zeros(-shift, vals.dtype), vals])
        if columns.labels:
            chunk.labels = vals
        else:
            chunk.mask = vals
    return chunk


def _few(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _disagree(name: str, uris: list[str], have: list[bool]) -> str:
    yes = [u for u, h in zip(uris, have) if h]
    no = [u for u, h in zip(uris, have) if not h]
    return (f"column {name!r} is in {len(yes)} of {len(uris)} input files ({_few(yes)}) but not in {_few(no)}; "
            "the files would be trained differently. Give every file the column, or choose for all of them: "
            "--labels-column/--loss-mask-column NAME (labels=/loss_mask= in Python) to use it (files without it are "
            "refused), --no-labels (labels=None) to train on every token")


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


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


def _kind(typ: pa.DataType) -> str:
    return "bool" if pa.types.is_boolean(typ.value_type) else "int"


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
            raise _packed_folder_error(folder or uri)
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
                f"{_few(missing)}: no column {name!r} (columns: {', '.join(have) or 'none'}); name the right one "
                "with --input-column/--labels-column/--loss-mask-column"
                + (f" (in {len(uris) - len(missing)} other input files it exists)"
                   if len(missing) < len(uris) else ""))
        kinds = {}
        for uri, schema in zip(uris, schemas):
            typ = schema.field(name).type
            _check_list_type(uri, name, typ, allow_bool=(name == columns.loss_mask))
            kinds.setdefault(_kind(typ), []).append(uri)
        if len(kinds) > 1:
            raise PackerError(f"column {name!r} holds integers in {_few(kinds['int'])} but booleans in "
                              f"{_few(kinds['bool'])}; give it one type in every file")
    return columns


def _check_padding(uri: str, batch: pa.RecordBatch, row0: int, input_ids: str) -> None:
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


# ---------------------------------------------------------------------------------------------- packed input


def packed_folder(inputs) -> str | None:
    """The local packed folder that ``inputs`` names alone (a path, or a list of one), or None."""
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, (str, os.PathLike)) or is_uri(inputs):
        return None
    path = Path(inputs)
    return str(path) if path.is_dir() and (path / MANIFEST_FILE).is_file() else None


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
    sfs, sinner, _ = filesystem(staging)
    sfs.create_dir(sinner, recursive=True)
    files, lengths, batches, index, offset = [], [], [], [], []
    row = 0
    for f, path in enumerate(reader.shard_paths):
        read = _stage_name(staging, f, str(path))
        row0, nb, pack0 = row, 0, 0
        rfs, rinner, _ = filesystem(read)
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


# ---------------------------------------------------------------------------------------------- the scan


def scan_inputs(inputs, *, columns: Columns = Columns(), staging: str | None = None,
                keep: bool = False, split: str | None = None) -> TokenizedInput:
    """Find, validate and measure the inputs, one record batch at a time.

    Before any row is read (or anything staged), the schemas of all files are read and the columns decided once
    for all of them (:func:`resolve_columns`). A packed folder given alone, with a staging folder, is read back
    as its sequences (:func:`scan_packed`); without one it is refused. A file with an ``attention_mask`` column
    is checked for padding (a 0 in the mask): padded input is refused (:func:`_check_padding`).

    Args:
        inputs: a path or paths, folders, globs (local) or URIs.
        columns: the columns to read (by default the labels or loss-mask column is detected).
        split: the split to take from folders that hold several (see :func:`resolve_paths`).
        staging: a folder (path or URI) to convert Parquet inputs into Arrow IPC files in (created on first
            use), so that shard jobs can memory-map them, and, when it is local, to copy remote inputs into; None
            reads every batch from its own file.
        keep: hold the scanned batches as the result's chunks (memory-mapped views for local Arrow IPC, decoded
            for Parquet and remote files) instead of opening them again on demand.

    Returns:
        The :class:`TokenizedInput`, with ``lengths``.

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot read.
    """
    folder = packed_folder(inputs)
    if folder is not None and staging is not None:
        if split is not None:
            raise PackerError(f"{folder}: is a packed folder, which has no splits; drop --split")
        return scan_packed(folder, columns=columns, staging=staging)
    uris = resolve_paths(inputs, split=split)
    kinds = [_sniff(uri) for uri in uris]
    schemas = [read_schema(uri, kind) for uri, kind in zip(uris, kinds)]
    columns = resolve_columns(uris, schemas, columns)
    names = columns.names
    files: list[InputFile] = []
    lengths: list[np.ndarray] = []
    batches: list[tuple[int, int, int]] = []
    kept: list[Chunk] = []
    row = 0
    staged_any = False
    staging_local = staging is not None and filesystem(staging)[2]
    for f, (uri, kind, schema) in enumerate(zip(uris, kinds, schemas)):
        read, read_kind = uri, kind
        padded = ATTENTION_MASK in schema.names and ATTENTION_MASK not in names
        scan_names = names + [ATTENTION_MASK] if padded else names
        fs, inner, local = filesystem(uri)
        try:
            size = fs.get_file_info(inner).size
            if kind == "arrow-stream":
                _check_stream_end(uri)
            schema, it = _open_batches(uri, kind, scan_names)
            if staging is not None and (kind == "parquet" or (not local and staging_local)):
                read, read_kind = _stage_name(staging, f, uri), "arrow-file"
                if not staged_any:
                    sfs, sinner, _ = filesystem(staging)
                    sfs.create_dir(sinner, recursive=True)
                    staged_any = True
                it = _stage(it, read, pa.schema([schema.field(n) for n in names]))
            row0 = row
            for b, batch in enumerate(it):
                if padded:
                    _check_padding(uri, batch, row - row0, columns.input_ids)
                n = _check_batch(uri, batch, names, row - row0)
                if batch.num_rows:
                    batches.append((f, b, row))
                    lengths.append(n)
                    if keep:
                        kept.append(_to_chunk(uri, columns, batch, row, row - row0))
                row += batch.num_rows
        except PackerError:
            raise
        except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
            raise _unreadable(uri, kind, e) from None
        files.append(InputFile(name=uri, read=read, kind=read_kind, rows=row - row0, bytes=int(size)))
        log.debug("scanned %s (%s, %d rows)", uri, kind, row - row0)
    index = np.asarray(batches, dtype=np.int64).reshape(-1, 3)
    return TokenizedInput(
        files=files,
        columns=columns,
        batches=index,
        chunks=kept if keep else BatchChunks(files, columns, index),
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64),
        staging=staging if staged_any else None,
    )


def open_input(paths, *, columns: Columns = Columns()) -> TokenizedInput:
    """Scan tokenized input files and keep their record batches (see :func:`scan_inputs` with ``keep=True``).

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot pack.
    """
    return scan_inputs(paths, columns=columns, keep=True)


def _stage_name(staging: str, index: int, uri: str) -> str:
    base = posixpath.basename(uri.rstrip("/"))
    return f"{staging.rstrip('/')}/{index:05d}-{base}.arrow"


def _stage(batches, dest: str, schema: pa.Schema):
    """Write ``batches`` to the Arrow IPC file ``dest`` as they pass, yielding each one written."""
    dfs, dinner, _ = filesystem(dest)
    with dfs.open_output_stream(dinner) as sink, pa.ipc.new_file(sink, schema) as w:
        for batch in batches:
            w.write_batch(batch.select(schema.names) if batch.schema.names != schema.names else batch)
            yield batch


class BatchChunks:
    """The record batches of ``chunks`` (``(file, batch, first global row)`` rows), opened on demand as
    :class:`Chunk`, one at a time.

    Indexing with ``c`` returns the batch of row ``c`` of ``chunks`` (a job's subset of
    :attr:`TokenizedInput.batches`). The gatherer visits chunks in ascending order, so one open batch at a time
    bounds memory for remote inputs; local Arrow files are memory-mapped and cost only the pages gathered.
    """

    def __init__(self, files: Sequence[InputFile], columns: Columns, chunks: np.ndarray):
        self.files = list(files)
        self.columns = columns
        self.chunks = chunks
        self._cached: tuple[int, Chunk] | None = None
        self._open: dict[int, object] = {}
        self._file_row0 = np.concatenate([[0], np.cumsum([x.rows for x in self.files])]).astype(np.int64)

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitem__(self, c: int) -> Chunk:
        if self._cached is not None and self._cached[0] == c:
            return self._cached[1]
        f, b, row_start = (int(x) for x in self.chunks[c])
        info = self.files[f]
        chunk = _to_chunk(info.name, self.columns, self._batch(f, b), row_start, row_start - int(self._file_row0[f]))
        self._cached = (c, chunk)
        return chunk

    def _batch(self, f: int, b: int) -> pa.RecordBatch:
        entry = self._open.get(f)
        info = self.files[f]
        if info.kind == "arrow-file" and is_local(info.read):
            # reopen per batch: the previous batch's memory map goes with it, so the file-backed pages this process
            # maps stay within one record batch (the page cache keeps them; with one map per file the job's
            # mapped pages grew to the whole file: 680 MB RSS per worker on 530 MB inputs)
            self._open = {}
            return pa.ipc.open_file(_open_source(info.read)).get_batch(b)
        if entry is None:
            if info.kind == "arrow-file":
                entry = pa.ipc.open_file(_open_source(info.read))
            else:  # streams and Parquet go forward: the batch iterator, index of the last batch read, that batch
                entry = [_open_batches(info.read, info.kind, self.columns.names)[1], -1, None]
            self._open = {f: entry}  # one input open at a time
        if info.kind == "arrow-file":
            return entry.get_batch(b)
        if entry[1] > b:  # reopen to go back (does not happen with ascending chunks)
            entry[:] = [_open_batches(info.read, info.kind, self.columns.names)[1], -1, None]
        while entry[1] < b:
            entry[2] = next(entry[0])
            entry[1] += 1
        return entry[2]


def input_fingerprint(inp: TokenizedInput) -> str:
    """sha256 over each file's name, size and row count and over all row lengths.

    Cheap (no token data is read) yet it changes whenever rows are added, removed, reordered across files or
    resized; ``packer verify --input`` compares the tokens themselves.
    """
    h = hashlib.sha256()
    for f in inp.files:
        h.update(f"{os.path.basename(f.name)}\0{int(f.rows)}\0{int(f.bytes)}\n".encode())
    h.update(np.ascontiguousarray(inp.lengths, dtype=np.int64).tobytes())
    return h.hexdigest()
