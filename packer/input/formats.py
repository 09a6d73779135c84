"""One input file on disk: Arrow IPC file, Arrow IPC stream or Parquet, told apart by their magic bytes.

Sniffing the format (:func:`sniff`, which also refuses empty files and text), the end-of-stream check of an Arrow
stream, the schema without reading a row (:func:`read_schema`), opening a file's record batches one at a time
(memory-mapped when local, through a pyarrow filesystem otherwise; Parquet decoded one row group at a time), the
"cannot be read" error, and the staged Arrow IPC copy that ``packer pack`` writes of Parquet and remote inputs.
"""
from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from packer.errors import PackerError
from packer.input import paths
from packer.input.paths import DOCS_INPUT, TEXT_SUFFIXES

ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_MAGIC = b"PAR1"
ARROW_STREAM_CONTINUATION = b"\xff\xff\xff\xff"
ARROW_STREAM_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def sniff(uri: str) -> str:
    """``arrow-file``, ``arrow-stream`` or ``parquet``, from the file's first bytes."""
    fs, inner, local = paths.filesystem(uri)
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


def check_stream_end(uri: str) -> None:
    """An Arrow IPC stream cut at a record-batch boundary still parses, minus its last batches; only the
    end-of-stream marker that every writer's ``close()`` appends tells it from a complete one."""
    fs, inner, _ = paths.filesystem(uri)
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


def open_source(uri: str):
    fs, inner, local = paths.filesystem(uri)
    return pa.memory_map(inner, "r") if local else fs.open_input_file(inner)


def open_batches(uri: str, kind: str, names: list[str]):
    """(schema, iterator over record batches) of one file; the batches are read as the iterator advances.

    Parquet batches are those of each row group decoded in turn (only the columns ``names``).
    """
    if kind == "parquet":
        fs, inner, local = paths.filesystem(uri)
        pf = pq.ParquetFile(inner if local else fs.open_input_file(inner), memory_map=local)

        def row_groups():
            for g in range(pf.num_row_groups):
                yield from pf.read_row_group(g, columns=names, use_threads=True).select(names).to_batches()

        return pf.schema_arrow, row_groups()
    source = open_source(uri)
    if kind == "arrow-file":
        r = pa.ipc.open_file(source)
        return r.schema, (r.get_batch(i) for i in range(r.num_record_batches))
    r = pa.ipc.open_stream(source)
    return r.schema, iter(r)


def unreadable(uri: str, kind: str, e: Exception) -> PackerError:
    what = "Parquet" if kind == "parquet" else "Arrow IPC"
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return PackerError(f"{uri}: cannot be read as {what} ({msg}); the file may be truncated or corrupted")


def read_schema(uri: str, kind: str | None = None) -> pa.Schema:
    """The Arrow schema of one input file: its footer (Parquet, Arrow file) or first message (Arrow stream); no row
    is read, and no record batch is opened."""
    kind = kind or sniff(uri)
    fs, inner, _ = paths.filesystem(uri)
    try:
        with fs.open_input_file(inner) as fh:
            if kind == "parquet":
                return pq.read_schema(fh)
            return (pa.ipc.open_file(fh) if kind == "arrow-file" else pa.ipc.open_stream(fh)).schema
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(uri, kind, e) from None


def stage_name(staging: str, index: int, uri: str) -> str:
    base = posixpath.basename(uri.rstrip("/"))
    return f"{staging.rstrip('/')}/{index:05d}-{base}.arrow"


def stage(batches, dest: str, schema: pa.Schema):
    """Write ``batches`` to the Arrow IPC file ``dest`` as they pass, yielding each one written."""
    dfs, dinner, _ = paths.filesystem(dest)
    with dfs.open_output_stream(dinner) as sink, pa.ipc.new_file(sink, schema) as w:
        for batch in batches:
            w.write_batch(batch.select(schema.names) if batch.schema.names != schema.names else batch)
            yield batch
