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

The modules, each importing only those listed before it; the names below are importable from here
(``from packer.input import Columns, scan_inputs``):

* :mod:`packer.input.paths`: what the user passed, resolved to data files (:func:`resolve_paths`,
  :func:`filesystem`, :func:`is_uri`, :func:`is_local`, :func:`packed_folder`);
* :mod:`packer.input.formats`: one file on disk: its format, schema and record batches (:func:`read_schema`), and
  the staged Arrow copy;
* :mod:`packer.input.columns`: which columns to read and the checks of their types and values (:class:`Columns`,
  :data:`DETECT`, :func:`resolve_columns`, :func:`has_column`, :func:`text_input_hint`);
* :mod:`packer.input.tokenized`: the scanned input (:class:`TokenizedInput`, :class:`InputFile`, :class:`Chunk`,
  :class:`BatchChunks`, :func:`input_fingerprint`);
* :mod:`packer.input.packed`: a packed folder read back as its sequences (:func:`scan_packed`);
* :mod:`packer.input.scan`: the scan itself (:func:`scan_inputs`, :func:`open_input`).
"""
from packer.input.paths import filesystem, is_local, is_uri, packed_folder, resolve_paths
from packer.input.formats import read_schema
from packer.input.columns import (
    ATTENTION_MASK,
    DETECT,
    LABELS,
    LOSS_MASK,
    Columns,
    has_column,
    resolve_columns,
    text_input_hint,
)
from packer.input.tokenized import BatchChunks, Chunk, InputFile, TokenizedInput, input_fingerprint
from packer.input.packed import scan_packed
from packer.input.scan import open_input, scan_inputs

__all__ = [
    "ATTENTION_MASK",
    "DETECT",
    "LABELS",
    "LOSS_MASK",
    "BatchChunks",
    "Chunk",
    "Columns",
    "InputFile",
    "TokenizedInput",
    "filesystem",
    "has_column",
    "input_fingerprint",
    "is_local",
    "is_uri",
    "open_input",
    "packed_folder",
    "read_schema",
    "resolve_columns",
    "resolve_paths",
    "scan_inputs",
    "scan_packed",
    "text_input_hint",
]
