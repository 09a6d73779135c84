"""The packed-folder format: the one module that defines it.

Both the writer (:mod:`packer.writer`) and every reader (:mod:`packer.reader`, the torch layer, ``verify``)
import the names below; nobody re-types a column name, dtype or file name.

A packed folder looks like this::

    out/
      packer.json                  manifest (FORMAT_NAME, FORMAT_VERSION, config, input fingerprint,
                                   shards with rows/bytes/xxh3_128 checksum, statistics, run timings,
                                   and its own checksum ``manifest_checksum``)
      data-00000-of-00003.arrow    Arrow IPC *stream* shards, one row per pack
      data-00001-of-00003.arrow
      data-00002-of-00003.arrow
      state.json                   written so that ``datasets.load_from_disk(out)`` opens the folder
      dataset_info.json

One row per pack, columns:

=================  ===========  ===========================================================================
column             Arrow type   meaning
=================  ===========  ===========================================================================
``input_ids``      list<int32>  the pack's tokens, sequences back to back, no padding (len = pack tokens)
``labels``         list<int32>  training labels; ``-100`` where not trained on, and always at the first token
                                of every sequence so no sequence learns to predict the next one's start
``cu_seqlens``     list<int32>  sequence boundaries: starts at 0, strictly increasing, ends at len(input_ids)
``seq_index``      list<int64>  for each sequence in the pack: its row in the input (global, in input order)
``seq_offset``     list<int32>  for each sequence: its first token's offset in that input row (non-zero only
                                for the later chunks of a sequence split with ``--overflow split``)
``seq_lengths``    list<int32>  for each sequence: its length (``diff(cu_seqlens)``); the column TRL's
                                padding-free collator (``trl.trainer.sft_trainer.DataCollatorForLanguageModeling``,
                                TRL 1.16) reads by this name to restart ``position_ids`` at every sequence
=================  ===========  ===========================================================================

``seq_lengths`` was added within format version 1: it repeats what ``cu_seqlens`` says, readers that do not use it
ignore it, and folders written before it (:data:`LEGACY_SCHEMA`) are read and verified as before; only training
with TRL needs it (re-run ``packer pack`` for that).

One optional column, present only in folders packed with ``--pad-to-multiple-of N`` (the manifest's
``config.pad_to_multiple_of`` records N; without the option the schema and the bytes are the ones above):

=======================  ===========  =====================================================================
column                   Arrow type   meaning
=======================  ===========  =====================================================================
``cu_seqlens_padded``    list<int32>  boundaries of the sequences' *padded spans*: sequence ``i``'s span has
                                      ``ceil(n_i / N) * N`` tokens (``n_i = cu_seqlens[i+1] - cu_seqlens[i]``);
                                      starts at 0, as many entries as ``cu_seqlens``, ends at most at
                                      ``capacity`` (a multiple of N)
=======================  ===========  =====================================================================

The stored tokens stay back to back without padding, so ``cu_seqlens`` keeps its meaning for every reader (the
real boundaries: TransformerEngine's and Megatron's ``cu_seqlens_q``). The padded layout is what the torch layer
builds from the two columns: sequence ``i``'s tokens at offset ``cu_seqlens_padded[i]`` followed by its alignment
padding (labels ``-100``), so ``cu_seqlens_padded`` are the offsets into that layout (Megatron's
``cu_seqlens_q_padded``). See ``docs/context_parallel.md``.

Token ids are stored as int32: every tokenizer's vocabulary is below 2**31, and a 20,000-token pack needs no
int64 offsets inside it. Padding is never stored; the torch layer pads each pack to ``capacity`` when it reads.

The manifest checksum. ``packer.json`` holds the checksum of every shard, and :data:`MANIFEST_CHECKSUM` holds the
:data:`CHECKSUM` hex digest of the manifest itself, so that an edit or damage of a field nothing cross-checks
(``config.capacity`` 20000 -> 20001, a statistic, the input fingerprint) is caught when the folder is opened:
:func:`read_manifest` checks it every time: 22 us for the full reference set's 7-shard manifest (31 us to parse
it), 0.9 ms for a 1,000-shard one (0.6 ms to parse), on a busy 2-core machine (``benchmarks/bench_manifest.py``).

* What it covers: every top-level key except itself and :data:`MANIFEST_RUN` (:data:`MANIFEST_UNCHECKED`).
  ``run`` holds the timings, engine and workers of one run, which differ between two runs of the same command;
  leaving it out keeps the checksum a function of the deterministic content only, so two runs that write
  byte-identical shards also write the same ``manifest_checksum`` (the tests compare manifests minus ``run``),
  and the checksum doubles as an identity of the packed content. Nothing reads ``run`` to interpret the data.
* Canonical form (:func:`manifest_canonical_bytes`): ``json.dumps(covered, sort_keys=True,
  separators=(",", ":"), ensure_ascii=True).encode("ascii")``, i.e. independent of the file's layout (the file
  stays indented for people) and of key order; ASCII escapes keep file names that are not valid UTF-8
  (surrogate escapes) hashable. The writer hashes the manifest after a JSON round trip, so what it hashes is
  exactly what a reader parses back (floats use ``repr``, which round-trips).
* Folders written before the checksum existed have no such key: they are read as before (a warning is logged
  once per folder and process; ``packer verify`` notes it). The key is optional for readers, so adding it did not
  change :data:`FORMAT_VERSION`: an older packer reading a new folder ignores the key, and the content means
  the same. The format name and version are checked before the checksum, so a manifest of another version is
  reported as such (a later version may define the checksum differently).
* A deliberate edit can be re-sealed with ``packer verify DIR --reseal`` (which verifies the folder first) or
  :func:`seal_manifest`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from packer.errors import PackerError

log = logging.getLogger(__name__)

FORMAT_NAME = "packer.packed"
FORMAT_VERSION = 1

MANIFEST_FILE = "packer.json"
HF_STATE_FILE = "state.json"
HF_INFO_FILE = "dataset_info.json"
SHARD_PATTERN = "data-{index:05d}-of-{count:05d}.arrow"
LOCK_FILE_SUFFIX = ".lock"
TMP_DIR_PREFIX = ".packer-tmp-"

IGNORE_INDEX = -100
"""Label value that losses skip (``torch.nn.CrossEntropyLoss(ignore_index=-100)``, Hugging Face convention)."""

DEFAULT_CAPACITY = 20_000
DEFAULT_SHARD_SIZE = 1_000
"""Packs per shard: 1,000 full 20,000-token packs are about 160 MB of tokens and labels."""

INPUT_IDS = "input_ids"
LABELS = "labels"
CU_SEQLENS = "cu_seqlens"
SEQ_INDEX = "seq_index"
SEQ_OFFSET = "seq_offset"
CU_SEQLENS_PADDED = "cu_seqlens_padded"
"""The optional column of folders packed with ``--pad-to-multiple-of`` (see the module docstring)."""
SEQ_LENGTHS = "seq_lengths"

TOKEN_DTYPE = "int32"
INDEX_DTYPE = "int64"

SCHEMA = pa.schema(
    [
        pa.field(INPUT_IDS, pa.list_(pa.int32())),
        pa.field(LABELS, pa.list_(pa.int32())),
        pa.field(CU_SEQLENS, pa.list_(pa.int32())),
        pa.field(SEQ_INDEX, pa.list_(pa.int64())),
        pa.field(SEQ_OFFSET, pa.list_(pa.int32())),
        pa.field(SEQ_LENGTHS, pa.list_(pa.int32())),
    ]
)
LEGACY_SCHEMA = SCHEMA.remove(SCHEMA.get_field_index(SEQ_LENGTHS))
"""The schema of folders written before :data:`SEQ_LENGTHS` existed (same format version; see above)."""
COLUMNS = tuple(SCHEMA.names)
ALIGNED_SCHEMA = SCHEMA.append(pa.field(CU_SEQLENS_PADDED, pa.list_(pa.int32())))
"""The schema of a folder packed with ``--pad-to-multiple-of``: :data:`SCHEMA` and then :data:`CU_SEQLENS_PADDED`."""

# Manifest keys (top level). Anything here that changes between two identical runs (timings, dates) lives under
# MANIFEST_RUN, which is documented as not part of the deterministic content.
MANIFEST_FORMAT = "format"
MANIFEST_VERSION = "format_version"
MANIFEST_CONFIG = "config"
MANIFEST_INPUT = "input"
MANIFEST_SHARDS = "shards"
MANIFEST_STATS = "stats"
MANIFEST_RUN = "run"
MANIFEST_CHECKSUM = "manifest_checksum"
"""The manifest's own :data:`CHECKSUM` hex digest (see the module docstring: what it covers, canonical form)."""
MANIFEST_UNCHECKED = (MANIFEST_CHECKSUM, MANIFEST_RUN)
"""Top-level manifest keys that the manifest checksum does not cover."""

# Keys inside the manifest: ``config["capacity"]`` (tokens per pack, from ``packer.convert.PackConfig``) and each
# entry of ``shards`` (from ``packer.writer.ShardInfo``), so that readers need not re-type them.
CONFIG_CAPACITY = "capacity"
CONFIG_PAD_TO_MULTIPLE_OF = "pad_to_multiple_of"
"""``config`` key recording ``--pad-to-multiple-of N``; absent from folders packed without it."""
SHARD_FILE = "file"
SHARD_ROWS = "rows"
SHARD_BYTES = "bytes"
CHECKSUM = "xxh3_128"
"""Shard checksum algorithm, and the key of each shard entry that holds its hex digest (32 digits).

xxh3-128 (the ``xxhash`` package, which ``datasets`` already requires) detects corruption as well as sha256 for
this purpose and runs at about 26 GB/s here against sha256's 1.9 GB/s: hashing the 1 GB output of the reference
set went from 0.5 s of CPU to 0.04 s, a quarter of the conversion's wall time and three quarters of ``verify``'s."""
SHARD_CHECKSUM = CHECKSUM
CHECKSUM_HEX_DIGITS = 32
_HASH_BLOCK = 16 << 20


def new_checksum():
    """A fresh hasher of :data:`CHECKSUM` (``update(bytes)``, ``hexdigest()``)."""
    import xxhash

    return xxhash.xxh3_128()


def file_checksum(path: str | os.PathLike) -> str:
    """The :data:`CHECKSUM` hex digest of a file, read in 16 MiB blocks."""
    h = new_checksum()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def manifest_canonical_bytes(manifest: dict) -> bytes:
    """The bytes :data:`MANIFEST_CHECKSUM` is the checksum of: the manifest without :data:`MANIFEST_UNCHECKED`,
    as compact JSON with sorted keys and ASCII escapes (whatever the file's indentation or key order)."""
    covered = {k: v for k, v in manifest.items() if k not in MANIFEST_UNCHECKED}
    return json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def manifest_checksum(manifest: dict) -> str:
    """The :data:`CHECKSUM` hex digest of :func:`manifest_canonical_bytes` (what :data:`MANIFEST_CHECKSUM` holds)."""
    h = new_checksum()
    h.update(manifest_canonical_bytes(manifest))
    return h.hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """A copy of ``manifest`` as a reader parses it back (one JSON round trip: tuples become lists), with
    :data:`MANIFEST_CHECKSUM` set as its last key. The writer seals every manifest it writes.

    Example:
        >>> sealed = seal_manifest({"format": FORMAT_NAME, "config": {"capacity": 8}, "run": {"seconds": 1}})
        >>> list(sealed)[-1], len(sealed[MANIFEST_CHECKSUM])
        ('manifest_checksum', 32)
        >>> sealed[MANIFEST_CHECKSUM] == seal_manifest({**sealed, "run": {"seconds": 2}})[MANIFEST_CHECKSUM]
        True
    """
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}))
    body[MANIFEST_CHECKSUM] = manifest_checksum(body)
    return body


_unsealed_warned: set[str] = set()


def check_manifest_checksum(manifest: dict, path: str | os.PathLike) -> bool:
    """Check a parsed manifest against its :data:`MANIFEST_CHECKSUM`.

    Args:
        manifest: the manifest as parsed from ``path``.
        path: its file, for the message.

    Returns:
        True when the checksum matches; False when the manifest has none (written by a packer before the
        checksum existed: accepted, see the module docstring).

    Raises:
        PackerError: the checksum differs from the content's or is not a hex digest: the manifest was modified or
            damaged after packing. The message names the file and the two ways out.
    """
    if MANIFEST_CHECKSUM not in manifest:
        return False
    stored = manifest[MANIFEST_CHECKSUM]
    actual = manifest_checksum(manifest)
    if stored == actual:
        return True
    if isinstance(stored, str) and len(stored) == CHECKSUM_HEX_DIGITS:
        what = f"its content's {CHECKSUM} checksum is {actual}, its {MANIFEST_CHECKSUM!r} says {stored}"
    else:
        what = f"its {MANIFEST_CHECKSUM!r} is {stored!r:.80}, not {CHECKSUM_HEX_DIGITS} hex digits"
    folder = Path(path).parent
    raise PackerError(
        f"{path}: the manifest was modified or damaged after packing ({what}); re-run 'packer pack' with "
        f"--overwrite to rewrite the folder, or, if you edited the manifest on purpose, run 'packer verify {folder} "
        "--reseal', which checks the shards against the edited manifest and then records its new checksum"
    )


def shard_name(index: int, count: int) -> str:
    """File name of shard ``index`` out of ``count``, e.g. ``data-00000-of-00003.arrow``."""
    return SHARD_PATTERN.format(index=index, count=count)


def hf_features(*, aligned: bool = False) -> dict:
    """The ``features`` entry of ``dataset_info.json`` for :data:`SCHEMA` (Hugging Face ``datasets`` >= 3), or for
    :data:`ALIGNED_SCHEMA` with ``aligned``."""

    def list_of(dtype: str) -> dict:
        return {"feature": {"dtype": dtype, "_type": "Value"}, "_type": "List"}

    features = {
        INPUT_IDS: list_of("int32"),
        LABELS: list_of("int32"),
        CU_SEQLENS: list_of("int32"),
        SEQ_INDEX: list_of("int64"),
        SEQ_OFFSET: list_of("int32"),
        SEQ_LENGTHS: list_of("int32"),
    }
    if aligned:
        features[CU_SEQLENS_PADDED] = list_of("int32")
    return features


def pad_to_multiple_of(manifest: dict) -> int | None:
    """N of a folder packed with ``--pad-to-multiple-of N`` (its ``config.pad_to_multiple_of``), else None."""
    config = manifest.get(MANIFEST_CONFIG)
    return config.get(CONFIG_PAD_TO_MULTIPLE_OF) if isinstance(config, dict) else None


def read_manifest(folder: str | os.PathLike, *, checksum: bool = True) -> dict:
    """Read and check a packed folder's manifest.

    Args:
        folder: the packed folder.
        checksum: check :data:`MANIFEST_CHECKSUM` (``packer verify`` turns it off here and reports it as a check
            of its own, so that the other checks still run on a modified manifest).

    Raises:
        PackerError: the path is not a packed folder, its manifest is unreadable, has another format version, was
            modified or damaged after packing (its checksum differs), or lacks a required key.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise PackerError(f"{folder}: no such folder")
    if not path.is_file():
        raise PackerError(f"{folder}: not a packed folder (no {MANIFEST_FILE}); create one with 'packer pack'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PackerError(f"{path}: unreadable manifest ({e}); re-run 'packer pack'") from None
    if not isinstance(manifest, dict) or manifest.get(MANIFEST_FORMAT) != FORMAT_NAME:
        raise PackerError(f"{path}: not a packer manifest (format is not {FORMAT_NAME!r})")
    version = manifest.get(MANIFEST_VERSION)
    if version != FORMAT_VERSION:
        raise PackerError(
            f"{path}: format version {version!r}, but this packer reads version {FORMAT_VERSION}; "
            "re-pack the input with this packer or install the packer version that wrote it"
        )
    if checksum and not check_manifest_checksum(manifest, path):
        key = os.path.abspath(path)
        if key not in _unsealed_warned:
            _unsealed_warned.add(key)
            log.warning("%s has no %s (written by an older packer): edits to it cannot be detected; add one with "
                        "'packer verify %s --reseal' or re-run 'packer pack'", path, MANIFEST_CHECKSUM, folder)
    for key in (MANIFEST_CONFIG, MANIFEST_SHARDS, MANIFEST_STATS):
        if key not in manifest:
            raise PackerError(f"{path}: the manifest has no {key!r}; the folder is damaged, re-run 'packer pack'")
    return manifest
