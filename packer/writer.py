"""Writing a packed folder, local or remote: the one writer of the format.

A local output gets its shards in a hidden temporary sibling folder, the manifest last, and one rename into place.

A reader therefore sees either no folder or a complete one: the manifest (:data:`packer.format.MANIFEST_FILE`) is
written after every shard has been flushed and fsynced, and the folder only gets its final name by an atomic
``os.rename`` once the manifest is there. An error or a kill leaves at most a ``.packer-tmp-*`` folder, which the
next run into the same output removes.

``--overwrite`` swaps the new folder and the old one in one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15
on ext4, xfs, btrfs, tmpfs), so a kill at any moment leaves the old output or the new one. Where the exchange is
unsupported it falls back to two renames (old aside, new into place); a kill between them, a window of
microseconds, leaves no output, and the next run cleans up both folders.

A lock file ``.<name>.lock`` next to the output (``fcntl.flock``, released by the kernel when the process dies)
serialises runs into the same output: the second one fails at once with a clear message. The holder deletes the
lock file before it lets go of the lock, so no ``.lock`` file stays behind after a run, finished or refused (a
killed run leaves one, which the next run reuses). A run that opened the file just before the holder deleted it
would lock a file nobody else can see; so after locking, each run checks that the path still names the file it
locked, and otherwise starts over (the usual protocol for deletable lock files).

An output given as a URI (``s3://...``, ``file://...``) goes through a pyarrow filesystem: object stores have no
atomic rename, so shards are written straight into the output folder and the manifest last (a folder without
:data:`packer.format.MANIFEST_FILE` is incomplete), and an error removes what was written. Both kinds get the same
finish: the sealed manifest and the ``datasets`` files.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from packer import format as fmt
from packer.errors import PackerError
from packer.input import filesystem, is_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    """What was written for one shard (kept in the manifest)."""

    file: str
    rows: int
    tokens: int
    sequences: int
    bytes: int
    xxh3_128: str


class HashingSink:
    """Wraps a binary output (a file, or a pyarrow output stream) and hashes everything written through it, so
    checksums cost no second read. The wrapped output is its owner's to flush and close; ``close`` here only
    tells pyarrow's ``PythonFile`` that the stream is done."""

    def __init__(self, out):
        self._out = out
        self._hash = fmt.new_checksum()
        self._pos = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._out.write(view)
        self._pos += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.closed = True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _list_array(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32, copy=False)), pa.array(values, type=typ))


def shard_table(
    *,
    input_ids: np.ndarray,
    labels: np.ndarray,
    token_offsets: np.ndarray,
    seq_lengths: np.ndarray,
    seq_offsets: np.ndarray,
    seq_index: np.ndarray,
    seq_start: np.ndarray,
    seq_lengths_padded: np.ndarray | None = None,
) -> pa.Table:
    """Build one shard's table from flat arrays (see :mod:`packer.format` for the columns).

    Args:
        input_ids, labels: int32 (tokens,), the packs' tokens back to back.
        token_offsets: int64 (rows + 1,), pack ``r`` holds ``input_ids[token_offsets[r]:token_offsets[r + 1]]``.
        seq_lengths: int32 (sequences,), the sequences back to back in pack order.
        seq_offsets: int64 (rows + 1,), pack ``r`` holds sequences ``seq_offsets[r]:seq_offsets[r + 1]``.
        seq_index: int64 (sequences,), each sequence's input row.
        seq_start: int (sequences,), each sequence's first token in its input row.
        seq_lengths_padded: int32 (sequences,), each sequence's padded length (``--pad-to-multiple-of``): adds the
            :data:`packer.format.CU_SEQLENS_PADDED` column (:data:`packer.format.ALIGNED_SCHEMA`). Default: none.
    """
    rows = token_offsets.shape[0] - 1
    # cu_seqlens of pack r: 0, then the running sum of its sequence lengths (restarting at every pack)
    cum = np.zeros(seq_lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(seq_lengths, out=cum[1:])
    starts_per_seq = np.repeat(cum[seq_offsets[:-1]], np.diff(seq_offsets))
    cu_values = np.empty(seq_lengths.shape[0] + rows, dtype=np.int32)
    cu_offsets = seq_offsets + np.arange(rows + 1, dtype=np.int64)
    is_first = np.zeros(cu_values.shape[0], dtype=bool)
    is_first[cu_offsets[:-1]] = True
    cu_values[is_first] = 0
    cu_values[~is_first] = cum[1:] - starts_per_seq
    arrays = [
        _list_array(token_offsets, input_ids, pa.int32()),
        _list_array(token_offsets, labels, pa.int32()),
        _list_array(cu_offsets, cu_values, pa.int32()),
        _list_array(seq_offsets, seq_index.astype(np.int64, copy=False), pa.int64()),
        _list_array(seq_offsets, seq_start.astype(np.int32, copy=False), pa.int32()),
        _list_array(seq_offsets, seq_lengths.astype(np.int32, copy=False), pa.int32()),
    ]
    if seq_lengths_padded is None:
        return pa.Table.from_arrays(arrays, schema=fmt.SCHEMA)
    arrays.append(_list_array(cu_offsets, _row_cumsums(seq_lengths_padded, seq_offsets), pa.int32()))
    return pa.Table.from_arrays(arrays, schema=fmt.ALIGNED_SCHEMA)


def _row_cumsums(seq_lengths: np.ndarray, seq_offsets: np.ndarray) -> np.ndarray:
    """int32 (sequences + rows,): for each row, 0 and then the running sum of its sequences' lengths."""
    rows = seq_offsets.shape[0] - 1
    cum = np.zeros(seq_lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(seq_lengths, out=cum[1:])
    out = np.empty(seq_lengths.shape[0] + rows, dtype=np.int32)
    firsts = seq_offsets[:-1] + np.arange(rows, dtype=np.int64)
    is_first = np.zeros(out.shape[0], dtype=bool)
    is_first[firsts] = True
    out[is_first] = 0
    out[~is_first] = cum[1:] - np.repeat(cum[seq_offsets[:-1]], np.diff(seq_offsets))
    return out


def shard_info(name: str, table: pa.Table, nbytes: int, checksum: str) -> ShardInfo:
    return ShardInfo(
        file=name,
        rows=table.num_rows,
        tokens=int(pc.list_value_length(table.column(fmt.INPUT_IDS)).to_numpy().sum()),
        sequences=int(pc.list_value_length(table.column(fmt.SEQ_INDEX)).to_numpy().sum()),
        bytes=nbytes,
        xxh3_128=checksum,
    )


def write_shard(folder: str | os.PathLike, name: str, table: pa.Table) -> ShardInfo:
    """Write shard file ``name`` into ``folder`` (a local path, fsynced, or a URI), hashing while writing.

    The file is an Arrow IPC stream of the table's schema (:data:`packer.format.SCHEMA`, or
    :data:`packer.format.ALIGNED_SCHEMA`); the bytes are the same for both kinds of destination.

    Raises:
        PackerError: the write failed (the message names the file).
    """
    if is_uri(folder):
        uri = f"{str(folder).rstrip('/')}/{name}"
        fs, inner, _ = filesystem(uri)
        try:
            with fs.open_output_stream(inner) as out:
                sink = HashingSink(out)
                with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as w:
                    w.write_table(table)
        except (OSError, pa.ArrowException) as e:
            raise PackerError(f"{uri}: write failed ({e}); check the URI and its permissions") from None
        return shard_info(name, table, sink.tell(), sink.hexdigest())
    path = Path(folder) / name
    try:
        with open(path, "wb") as fh:
            sink = HashingSink(fh)
            with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as w:
                w.write_table(table)
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, pa.ArrowException) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise PackerError(f"{path}: write failed ({reason}); check free space and permissions") from None
    return shard_info(name, table, sink.tell(), sink.hexdigest())


def hf_state(shards: list[ShardInfo], fingerprint: str) -> dict:
    """The ``state.json`` that lets ``datasets.load_from_disk`` open a packed folder."""
    return {
        "_data_files": [{"filename": s.file} for s in shards],
        "_fingerprint": fingerprint[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }


def hf_info(*, aligned: bool = False) -> dict:
    """The ``dataset_info.json`` of a packed folder (``aligned``: packed with ``--pad-to-multiple-of``)."""
    return {"features": fmt.hf_features(aligned=aligned), "description": "packed by packer"}


class PackedWriter:
    """Context manager that writes a packed folder: atomically for a local path, manifest last for a URI (see the
    module docstring).

    Attributes:
        tmp: where shards go while the folder is written (a local temporary folder, or the output URI itself);
            shard jobs write there with :func:`write_shard`.
        shards: each shard's :class:`ShardInfo` once written.

    Example:
        >>> with PackedWriter("out", n_shards=2) as w:           # doctest: +SKIP
        ...     w.write_shard(0, table0); w.write_shard(1, table1)
        ...     manifest = w.finish({"format": ...})
    """

    def __init__(self, output: str | os.PathLike, *, n_shards: int, overwrite: bool = False):
        self.remote = is_uri(output)
        self.output = str(output).rstrip("/") if self.remote else Path(output)
        self.n_shards = n_shards
        self.overwrite = overwrite
        self.shards: list[ShardInfo | None] = [None] * n_shards
        self.tmp: Path | str | None = None
        self._lock_fd: int | None = None
        self._published = False

    @property
    def lock_path(self) -> Path:
        return self.output.parent / (f".{self.output.name}{fmt.LOCK_FILE_SUFFIX}")

    def _acquire_lock(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise PackerError(
                        f"{self.output}: another packer run is writing this output right now; wait for it or "
                        "choose another --output"
                    ) from None
                raise
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                self._lock_fd = fd
                return
            os.close(fd)  # the previous holder deleted the file we locked: lock the one the path names now

    def _remove_stale_tmp(self) -> None:
        # Exactly this output's temp and trash folders: a plain prefix match on ".packer-tmp-out-" would also
        # delete the live temp folder of a concurrent run into "out-2", which holds a different lock.
        pattern = re.compile(re.escape(f"{fmt.TMP_DIR_PREFIX}{self.output.name}-") + r"(?:old-)?[0-9a-f]{12}")
        for p in self.output.parent.iterdir():
            if pattern.fullmatch(p.name):
                log.info("removing %s left by an interrupted run", p)
                shutil.rmtree(p, ignore_errors=True)

    def _check_replaceable(self) -> None:
        """--overwrite replaces a packed folder or an empty folder, nothing else.

        A mistyped ``--output ~`` or ``--output src/`` must not delete a user's files: a folder that holds files
        but no packer manifest, a file and a symlink are left alone.
        """
        out = self.output
        if out.is_symlink() or not out.is_dir():
            raise PackerError(f"{out}: exists and is not a folder; remove it or choose another --output")
        if not (out / fmt.MANIFEST_FILE).is_file() and any(out.iterdir()):
            raise PackerError(
                f"{out}: exists and is not a packed folder (no {fmt.MANIFEST_FILE}), so --overwrite will not replace "
                "it; remove it yourself or choose another --output"
            )

    def __enter__(self) -> "PackedWriter":
        if self.remote:
            return self._enter_remote()
        if not self.output.name or self.output.name in (".", ".."):
            raise PackerError(f"{self.output}: not a usable output folder name; pass e.g. --output packed/")
        parent = self.output.parent
        if not parent.is_dir():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PackerError(f"{parent}: cannot create the output's parent folder ({e.strerror})") from None
        if self.output.exists() and not self.overwrite:
            raise PackerError(f"{self.output}: already exists; pass --overwrite to replace it")
        try:
            self._acquire_lock()
        except OSError as e:
            raise PackerError(f"{self.output}: cannot lock the output ({e.strerror})") from None
        try:
            if self.output.exists() or self.output.is_symlink():
                if not self.overwrite:  # another run finished while we waited for the lock
                    raise PackerError(f"{self.output}: already exists; pass --overwrite to replace it")
                self._check_replaceable()
            self._remove_stale_tmp()
            self.tmp = parent / f"{fmt.TMP_DIR_PREFIX}{self.output.name}-{uuid.uuid4().hex[:12]}"
            try:
                self.tmp.mkdir()
            except OSError as e:
                raise PackerError(f"{parent}: cannot write here ({e.strerror})") from None
        except BaseException:
            self._release_lock()
            raise
        return self

    def _enter_remote(self) -> "PackedWriter":
        fs, inner, _ = filesystem(self.output)
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            if not self.overwrite:
                raise PackerError(f"{self.output}: already exists; pass --overwrite to replace it")
            fs.delete_dir_contents(inner, missing_dir_ok=True)
        fs.create_dir(inner, recursive=True)
        self.tmp = self.output
        return self

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)  # while still holding the lock: see the module docstring
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.remote:
            if self.tmp is not None and not self._published:  # an incomplete remote folder is removed
                fs, inner, _ = filesystem(self.output)
                try:
                    fs.delete_dir(inner)
                except (OSError, pa.ArrowException):
                    pass
            return
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._release_lock()

    def write_shard(self, index: int, table: pa.Table) -> ShardInfo:
        """Write shard ``index`` (an Arrow IPC stream, readable memory-mapped; fsynced when local)."""
        assert self.tmp is not None, "use PackedWriter as a context manager"
        return self.add_shard(index, write_shard(self.tmp, fmt.shard_name(index, self.n_shards), table))

    def add_shard(self, index: int, info: ShardInfo) -> ShardInfo:
        """Record shard ``index`` written into :attr:`tmp` by someone else (a worker process, a Ray task)."""
        self.shards[index] = info
        return info

    def finish(self, manifest: dict, *, before_publish: Callable[[Path], None] | None = None) -> dict:
        """Write the manifest and the ``datasets`` files, then move the folder into place. Returns the manifest.

        Args:
            manifest: the manifest without its ``shards`` entry and its checksum (both added here:
                :func:`packer.format.seal_manifest`).
            before_publish: called with the complete temporary folder just before it takes the output's name
                (``packer pack --verify`` verifies there); an exception from it leaves no output. Local outputs
                only.
        """
        assert self.tmp is not None
        if self.remote and before_publish is not None:
            raise PackerError("verification reads the output through a local path; verify a local copy of a URI "
                              "output with 'packer verify'")
        missing = [i for i, s in enumerate(self.shards) if s is None]
        if missing:
            raise RuntimeError(f"shard {missing[0]} was never written")
        manifest = dict(manifest)
        manifest[fmt.MANIFEST_SHARDS] = [asdict(s) for s in self.shards]
        manifest = fmt.seal_manifest(manifest)
        try:
            self._write_json(fmt.HF_INFO_FILE, hf_info(aligned=fmt.pad_to_multiple_of(manifest) is not None))
            self._write_json(
                fmt.HF_STATE_FILE, hf_state(self.shards, manifest.get(fmt.MANIFEST_INPUT, {}).get("fingerprint", "packer"))
            )
            self._write_json(fmt.MANIFEST_FILE, manifest)
            if not self.remote:
                _fsync_dir(self.tmp)
        except (OSError, pa.ArrowException) as e:
            raise PackerError(f"{self.output}: could not finish writing ({getattr(e, 'strerror', None) or e})") from None
        if self.remote:
            self._published = True
            return manifest
        if before_publish is not None:
            before_publish(self.tmp)
        try:
            self._publish()
        except OSError as e:
            raise PackerError(f"{self.output}: could not finish writing ({e.strerror or e})") from None
        self.tmp = None
        return manifest

    def _publish(self) -> None:
        """Give the temporary folder the output's name (replacing an old output atomically where possible)."""
        if not (self.output.exists() or self.output.is_symlink()):
            os.rename(self.tmp, self.output)  # fails with ENOTEMPTY/EEXIST if someone created it meanwhile
        elif _exchange(self.tmp, self.output):
            # the old output now sits at self.tmp; it is this output's temp name, so a kill here is cleaned up
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            trash = self.output.parent / f"{fmt.TMP_DIR_PREFIX}{self.output.name}-old-{uuid.uuid4().hex[:12]}"
            os.rename(self.output, trash)
            try:
                os.rename(self.tmp, self.output)
            except OSError:
                os.rename(trash, self.output)  # put the old output back rather than leave none
                raise
            shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(self.output.parent)

    def _write_json(self, name: str, obj: dict) -> None:
        text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
        if self.remote:
            fs, inner, _ = filesystem(f"{self.tmp}/{name}")
            with fs.open_output_stream(inner) as out:
                out.write(text.encode())
            return
        with open(self.tmp / name, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False where the OS or filesystem lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or glibc < 2.28
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
