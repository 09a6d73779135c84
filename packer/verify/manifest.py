"""The checks of the manifest and the files: its own checksum, its schema, every shard file present, regular and of
its recorded size and checksum, ``state.json`` consistent."""
from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import pyarrow as pa

from packer import format as fmt
from packer.errors import PackerError
from packer.plan import OVERFLOW_POLICIES
from packer.input import Columns
from packer.verify.records import VerifyConfig, Collector


def check_manifest_checksum(folder: Path, manifest: dict, col: Collector, *, allow_unsealed: bool) -> None:
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


def check_manifest(manifest: dict, col: Collector) -> VerifyConfig | None:
    """Validate the manifest's fields (:func:`packer.format.manifest_field_problems`, and the config's overflow
    policy and columns); return the usable config or None when the config or the shard list cannot be used.
    Problems of ``stats`` alone are defects, and the shards are still checked; a bad ``config.pad_to_multiple_of``
    is left to the alignment check (``VerifyConfig.pad_problem``)."""
    col.ran.add("manifest")
    add = lambda msg: col.add("manifest", msg)  # noqa: E731
    blocking = False
    pad_problem = None
    for key, message in fmt.manifest_field_problems(manifest):
        if key == fmt.CONFIG_PAD_PROBLEM:
            pad_problem = message
            continue
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
    return VerifyConfig(capacity=capacity, overflow=cfg["overflow"], columns=columns,
                        pad_to_multiple_of=None if pad_problem else fmt.pad_to_multiple_of(manifest),
                        pad_problem=pad_problem)


def check_files(folder: Path, shards: list[dict], col: Collector, *, checksums: bool) -> list:
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
