"""What the user passed, resolved to an ordered list of data files (the first step of the input layer).

Local paths, globs and URIs that :mod:`pyarrow.fs` supports (``s3://``, ``gs://``, ``hdfs://``, ``file://``; all
inputs of one kind) name files, folders searched recursively, ``datasets.Dataset.save_to_disk`` folders (their
``state.json`` lists the shards in order) and ``DatasetDict`` folders. A folder must hold one dataset: several are
refused with their names unless ``split`` picks one (:func:`resolve_paths`). A packed folder (one with a
``packer.json``) is recognised here: given alone it is read back as its sequences (:func:`packed_folder`,
:mod:`packer.input.packed`); inside a folder it is skipped; anywhere else it is refused.

:func:`filesystem` is the one way the input layer opens a location; the other modules call it through this module
(``paths.filesystem``), so that a test can stand in for a remote filesystem at this one place.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import posixpath
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from packer.errors import ConfigError, PackerError
from packer.format import MANIFEST_FILE

log = logging.getLogger(__name__)

INPUT_SUFFIXES = (".arrow", ".parquet", ".parq")
TEXT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".csv", ".tsv", ".txt")
DOCS_INPUT = "docs/input.md"
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval", "evaluation")
"""Names that mark a split of a dataset when a folder or a file name is one of them (the Hugging Face hub's
``data/train-00000-of-00002.parquet``, a ``DatasetDict`` folder's ``train/``)."""


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


def packed_folder(inputs) -> str | None:
    """The local packed folder that ``inputs`` names alone (a path, or a list of one), or None."""
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, (str, os.PathLike)) or is_uri(inputs):
        return None
    path = Path(inputs)
    return str(path) if path.is_dir() and (path / MANIFEST_FILE).is_file() else None


def packed_folder_error(path) -> PackerError:
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
        raise packed_folder_error(path)
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
                 len(folders), few(folders))
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
        raise packed_folder_error(uri)
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


def few(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")
