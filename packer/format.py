"""The packed-folder format: the one module that defines it.

Both the writer (:mod:`packer.writer`) and every reader (:mod:`packer.packed_reader`, the torch layer, ``verify``,
:mod:`packer.input.packed`) import the names below; nobody re-types a column name, dtype or file name.

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
* Folders written before the checksum existed have no such key. Readers refuse them by default (a manifest
  whose key was deleted cannot be told from an old one); ``allow_unsealed=True`` (``--allow-unsealed`` on the
  command line) reads them as before, with a warning, and ``packer verify DIR --reseal`` adds the key for good.
  Adding the key did not change :data:`FORMAT_VERSION`: an older packer reading a new folder ignores it, and the
  content means the same. The format name and version are checked before the checksum, so a manifest of another
  version is reported as such (a later version may define the checksum differently).
* A deliberate edit can be re-sealed with ``packer verify DIR --reseal`` (which verifies the folder first) or
  :func:`seal_manifest`.

The manifest's schema (:func:`manifest_problems`) is checked by every reader after the checksum: a sealed manifest
can still be crafted, and a field of the wrong type or range must be a PackerError naming it, not a TypeError, a
symlink target or a 2 GB item. Files of the folder are opened as regular files only (:func:`open_regular_file`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from packer.errors import PackerError
from packer.plan import MAX_CAPACITY as PLAN_MAX_CAPACITY
from packer.plan import pad_to_multiple_of_fault

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
        what = f"its {MANIFEST_CHECKSUM!r} is {short_repr(stored)}, not {CHECKSUM_HEX_DIGITS} hex digits"
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


MAX_MANIFEST_BYTES = 64 << 20
"""A manifest larger than this is refused unread: a 1,000-shard manifest is about 0.4 MB."""
MAX_MANIFEST_DEPTH = 32
"""Deepest nesting of objects and lists a manifest may have (packer writes 3 levels): a deeper one is refused
before anything recurses into it."""
MAX_SHARDS = 99_999
"""Most shards a folder can have: :data:`SHARD_PATTERN` numbers them with five digits."""
MAX_CAPACITY = PLAN_MAX_CAPACITY
"""Largest ``config.capacity`` a reader accepts: the largest ``packer pack`` writes (:data:`packer.plan.MAX_CAPACITY`,
2**24 tokens). A crafted manifest with a larger one would make every padded item that long (2**31 - 1 tokens: 48
GiB of three int64 rows)."""

# Manifest schema. Every reader (the dataset, ``packer stats``, ``report``, ``verify``) checks these before it uses
# a field, so that a damaged or crafted manifest is a PackerError naming the field, never a TypeError or KeyError.
CONFIG_STRINGS = ("strategy", "overflow")
SHARD_COUNTS = (SHARD_ROWS, "tokens", "sequences", SHARD_BYTES)
STATS_COUNTS = (
    "sequences_in", "tokens_in", "empty_sequences_skipped", "sequences_dropped", "tokens_dropped",
    "sequences_truncated", "tokens_truncated", "sequences_split", "sequences_out", "tokens_out", "packs", "capacity",
    "lower_bound_packs", "padding_tokens", "sequences_per_pack_min", "sequences_per_pack_max", "max_length_in",
    "packs_over_lower_bound",
)
"""Statistics (:func:`packer.stats.compute_stats`) that are non-negative integers; all are required."""
STATS_OPTIONAL_COUNTS = (
    "label_tokens", "sequences_untrainable", "tokens_untrainable", "groups", "group_size",
    "group_packs_over_lower_bound", "pad_to_multiple_of", "alignment_padding_tokens", "end_padding_tokens",
    "tokens_out_padded", "lower_bound_packs_padded",
)
"""Statistics that are non-negative integers when present (newer packers, grouped plans, aligned folders)."""
STATS_NUMBERS = (
    "packing_efficiency", "padding_overhead", "sequences_per_pack_mean", "packs_all_short", "mean_length_in",
    "data_loss_sequences", "data_loss_tokens",
)
"""Statistics that are finite numbers; all are required."""
STATS_OPTIONAL_NUMBERS = ("loss_sequences", "loss_tokens", "alignment_padding_overhead")
"""Statistics that are finite numbers when present."""
STATS_TOGETHER = (
    ("sequences_untrainable", "tokens_untrainable", "loss_sequences", "loss_tokens"),
    ("pad_to_multiple_of", "alignment_padding_tokens", "alignment_padding_overhead", "end_padding_tokens",
     "tokens_out_padded", "lower_bound_packs_padded"),
)
"""Optional statistics written together: a manifest has all of a group or none."""


class ShardLayoutError(ValueError):
    """A list column of a shard whose buffers do not hold what its lengths say (see :func:`list_column_arrays`).

    Attributes:
        what: the problem, worded to follow a column name ("has null rows").
        row: the first row concerned, within the array, when there is one.
    """

    def __init__(self, what: str, row: int | None = None):
        super().__init__(what)
        self.what, self.row = what, row


def list_column_arrays(arr: pa.Array, dtype) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of a shard's list column as numpy arrays: the one reader of the shard layout's lists, used by
    :class:`packer.packed_reader.PackedReader` (the dataset, ``packer stats`` and ``report``) and ``packer verify``.

    Args:
        arr: a ``list<int32>`` or ``list<int64>`` array (one record batch's column).
        dtype: numpy dtype of the values (``np.int32`` or ``np.int64``).

    Returns:
        ``(offsets, values)``: int64 (len(arr) + 1,), row ``r`` is ``values[offsets[r]:offsets[r + 1]]``; and a
        read-only zero-copy view of the values buffer (a slice's offset included, so ``offsets`` index it as they
        are). No pandas: ``Array.to_numpy`` imported it (0.29 s and 26 MiB the first time in a process).

    Raises:
        ShardLayoutError: null rows or values, buffers shorter than the lengths say, offsets outside the values or
            decreasing (the row named): what a damaged or crafted file holds, checked before numpy or a kernel
            indexes with them.
    """
    if arr.null_count:
        raise ShardLayoutError("has null rows")
    child = arr.values
    if child.null_count:
        raise ShardLayoutError("has null values")
    width = np.dtype(dtype).itemsize
    off_buf, val_buf = arr.buffers()[1], child.buffers()[1]
    # the buffer sizes come from the stream's metadata: smaller than the lengths say is damage, not a ValueError
    if (off_buf is None or off_buf.size < (arr.offset + len(arr) + 1) * 4
            or (val_buf.size if val_buf is not None else 0) < (child.offset + len(child)) * width):
        raise ShardLayoutError("has buffers shorter than its lengths")
    offsets = np.frombuffer(off_buf, dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4).astype(np.int64)
    values = (np.frombuffer(val_buf, dtype=dtype, count=len(child), offset=child.offset * width) if len(child)
              else np.zeros(0, dtype=dtype))
    if offsets[0] < 0 or offsets[-1] > values.shape[0]:
        raise ShardLayoutError(f"has offsets outside its {values.shape[0]:,} values")
    down = offsets[1:] < offsets[:-1]
    if down.any():
        raise ShardLayoutError("has decreasing offsets", int(np.argmax(down)))
    return offsets, values


def short_repr(x) -> str:
    """A short description of a manifest value for a message (never the repr of a large or deep container)."""
    if isinstance(x, dict):
        return f"an object with {len(x):,} key(s)"
    if isinstance(x, list):
        return f"a list of {len(x):,}"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _too_deep(obj, limit: int) -> bool:
    """Whether ``obj`` (parsed JSON) nests objects/lists deeper than ``limit``; iterative, so it cannot recurse."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > limit:
            return True
        children = o.values() if isinstance(o, dict) else o
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def is_count(x, lo: int = 0) -> bool:
    """``x`` is an int (not a bool) of at least ``lo``: a count as the manifest's JSON holds it."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def is_finite_number(x) -> bool:
    """An int or float (not a bool) that is finite: what a numeric manifest field must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def manifest_problems(manifest) -> list[str]:
    """What makes ``manifest`` unusable, as messages naming the field (empty when it is well-formed).

    The schema: ``format`` and ``format_version`` as :data:`FORMAT_NAME` / :data:`FORMAT_VERSION`; ``config`` an
    object with ``capacity`` an integer in 1..:data:`MAX_CAPACITY`, ``strategy``/``overflow`` strings and, when
    present and not null, ``pad_to_multiple_of`` a positive integer that divides the capacity; ``shards``
    a list of 1..:data:`MAX_SHARDS` objects where entry ``i`` of ``n`` names exactly ``shard_name(i, n)`` (so every
    file ``0..n-1`` is listed once and no name leaves the folder) with non-negative integer ``rows``, ``tokens``,
    ``sequences``, ``bytes`` and a :data:`CHECKSUM_HEX_DIGITS`-digit hex :data:`SHARD_CHECKSUM`; ``stats`` an object
    with the non-negative integers :data:`STATS_COUNTS` and the finite numbers :data:`STATS_NUMBERS`, whose
    ``capacity`` and ``padding_tokens`` agree with the config and its own ``packs`` and ``tokens_out``, and whose
    ``packs``, ``tokens_out`` and ``sequences_out`` are the sums over the shard entries; ``input`` and ``run``
    objects when present. Whether the shards on disk agree is for the readers to check.
    """
    return [message for _, message in manifest_field_problems(manifest)]


CONFIG_PAD_PROBLEM = f"{MANIFEST_CONFIG}.{CONFIG_PAD_TO_MULTIPLE_OF}"
"""The key :func:`manifest_field_problems` gives a bad ``config.pad_to_multiple_of`` alone (``packer verify``
reports it under its ``alignment`` check and keeps checking the rest)."""


def manifest_field_problems(manifest) -> list[tuple[str, str]]:
    """:func:`manifest_problems` as ``(key, message)`` pairs, ``key`` the top-level key at fault (``packer verify``
    keeps checking the shards when only ``stats`` is at fault), or :data:`CONFIG_PAD_PROBLEM` for a bad
    ``config.pad_to_multiple_of``."""
    if not isinstance(manifest, dict) or manifest.get(MANIFEST_FORMAT) != FORMAT_NAME:
        return [(MANIFEST_FORMAT, f"not a packer manifest (format is not {FORMAT_NAME!r})")]
    version = manifest.get(MANIFEST_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        return [(MANIFEST_VERSION, f"format version {short_repr(version)}, but this packer reads version "
                 f"{FORMAT_VERSION}; re-pack the input with this packer or install the packer version that wrote it")]
    problems = _top_level_problems(manifest)
    if problems:
        return problems
    capacity = _config_problems(manifest[MANIFEST_CONFIG], problems)
    sums = _shards_problems(manifest[MANIFEST_SHARDS], problems)
    _stats_problems(manifest[MANIFEST_STATS], capacity, sums, problems)
    _alignment_problems(manifest[MANIFEST_CONFIG], capacity, problems)
    return problems


def _top_level_problems(manifest: dict) -> list[tuple[str, str]]:
    """The sections every manifest has (config, shards, stats), and input/run as objects when present."""
    problems = []
    for key in (MANIFEST_CONFIG, MANIFEST_SHARDS, MANIFEST_STATS):
        if key not in manifest:
            problems.append((key, f"the manifest has no {key!r}"))
    for key in (MANIFEST_INPUT, MANIFEST_RUN):
        if key in manifest and not isinstance(manifest[key], dict):
            problems.append((key, f"{key} is {type(manifest[key]).__name__}, not an object"))
    return problems


def _config_problems(cfg, problems: list[tuple[str, str]]) -> int | None:
    """Append the config's problems (capacity, strategy and overflow strings) to ``problems``;
    return the capacity, or None when it is unusable."""
    if not isinstance(cfg, dict):
        problems.append((MANIFEST_CONFIG, f"config is {type(cfg).__name__}, not an object"))
        return None
    capacity = cfg.get(CONFIG_CAPACITY)
    if not is_count(capacity, 1) or capacity > MAX_CAPACITY:
        problems.append((MANIFEST_CONFIG, f"config.{CONFIG_CAPACITY} is {short_repr(capacity)}, not an integer in "
                         f"1..{MAX_CAPACITY:,}"))
        capacity = None
    for key in CONFIG_STRINGS:
        if not isinstance(cfg.get(key), str):
            problems.append((MANIFEST_CONFIG, f"config.{key} is {short_repr(cfg.get(key))}, not a string"))
    return capacity


def _alignment_problems(cfg, capacity: int | None, problems: list[tuple[str, str]]) -> None:
    """Append a bad ``config.pad_to_multiple_of`` (:func:`packer.plan.pad_to_multiple_of_fault`: a positive integer
    that divides the capacity, or absent/None) to ``problems``, keyed :data:`CONFIG_PAD_PROBLEM`; checked only with
    a usable capacity (an unusable one is a problem already)."""
    if capacity is None:
        return
    multiple = cfg.get(CONFIG_PAD_TO_MULTIPLE_OF)
    if pad_to_multiple_of_fault(multiple, capacity) is not None:
        problems.append((CONFIG_PAD_PROBLEM, f"config.{CONFIG_PAD_TO_MULTIPLE_OF} is {short_repr(multiple)}, not a "
                         f"positive integer that divides the capacity {capacity:,}"))


def _shards_problems(shards, problems: list[tuple[str, str]]) -> dict[str, int] | None:
    """Append the shard list's problems to ``problems`` (entries stop being checked at 20 problems in all); return
    the sums of :data:`SHARD_COUNTS` over the entries, or None when an entry's count is unusable."""
    def add(message: str) -> None:
        problems.append((MANIFEST_SHARDS, message))

    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        add(f"shards is {short_repr(shards)}, not a list of 1 to {MAX_SHARDS:,} shard entries")
        return None
    sums = {key: 0 for key in SHARD_COUNTS}
    for i, entry in enumerate(shards):
        if len(problems) >= 20:
            break
        if not isinstance(entry, dict):
            add(f"shard entry {i} is {short_repr(entry)}, not an object")
            sums = None
            continue
        want = shard_name(i, len(shards))
        if entry.get(SHARD_FILE) != want:
            add(f"shard entry {i} names file {short_repr(entry.get(SHARD_FILE))}, expected {want!r} "
                f"(shard {i} of {len(shards)})")
        for key in SHARD_COUNTS:
            if not is_count(entry.get(key)):
                add(f"shard entry {i} has {key} {short_repr(entry.get(key))}, not a non-negative integer")
                sums = None
            elif sums is not None:
                sums[key] += entry[key]
        digest = entry.get(SHARD_CHECKSUM)
        if not (isinstance(digest, str) and len(digest) == CHECKSUM_HEX_DIGITS
                and all(c in "0123456789abcdef" for c in digest)):
            add(f"shard entry {i} has {SHARD_CHECKSUM} {short_repr(digest)}, not {CHECKSUM_HEX_DIGITS} "
                "lowercase hex digits")
    return sums


def _stats_problems(stats, capacity: int | None, sums: dict[str, int] | None,
                    problems: list[tuple[str, str]]) -> None:
    """Append the statistics' problems to ``problems``: types, groups written together, and (when those and the
    capacity are sound) their agreement with the config, with each other and with the shard entries' ``sums``."""
    def add(message: str) -> None:
        problems.append((MANIFEST_STATS, message))

    if not isinstance(stats, dict):
        add(f"stats is {type(stats).__name__}, not an object")
        return
    stats_ok = True
    for key in STATS_COUNTS + STATS_OPTIONAL_COUNTS:
        if (key in stats or key in STATS_COUNTS) and not is_count(stats.get(key)):
            add(f"stats.{key} is {short_repr(stats.get(key))}, not a non-negative integer")
            stats_ok = False
    for key in STATS_NUMBERS + STATS_OPTIONAL_NUMBERS:
        if (key in stats or key in STATS_NUMBERS) and not is_finite_number(stats.get(key)):
            add(f"stats.{key} is {short_repr(stats.get(key))}, not a finite number")
    for group in STATS_TOGETHER:
        have = [k for k in group if k in stats]
        if have and len(have) < len(group):
            add(f"stats has {', '.join(have)} but not {', '.join(k for k in group if k not in stats)}, which are "
                "written together")
            stats_ok = False
    if not stats_ok or capacity is None:
        return
    if stats["capacity"] != capacity:
        add(f"stats.capacity is {stats['capacity']:,} but config.capacity is {capacity:,}")
    if stats["padding_tokens"] != stats["packs"] * capacity - stats["tokens_out"]:
        add(f"stats.padding_tokens is {stats['padding_tokens']:,}, but {stats['packs']:,} packs of "
            f"{capacity:,} tokens holding {stats['tokens_out']:,} tokens leave "
            f"{stats['packs'] * capacity - stats['tokens_out']:,}")
    lost = stats["tokens_dropped"] + stats["tokens_truncated"]
    if stats["tokens_in"] != stats["tokens_out"] + lost:
        add(f"stats.tokens_in is {stats['tokens_in']:,}, but tokens_out + tokens_dropped + tokens_truncated is "
            f"{stats['tokens_out'] + lost:,}")
    kept = stats["sequences_in"] - stats["empty_sequences_skipped"] - stats["sequences_dropped"]
    if not 0 <= kept <= stats["sequences_out"]:
        add(f"stats.sequences_in is {stats['sequences_in']:,}: minus {stats['empty_sequences_skipped']:,} empty and "
            f"{stats['sequences_dropped']:,} dropped it leaves {kept:,} rows for {stats['sequences_out']:,} packed "
            "sequences")
    if sums is not None:
        for key, total in (("packs", sums[SHARD_ROWS]), ("tokens_out", sums["tokens"]),
                           ("sequences_out", sums["sequences"])):
            if stats[key] != total:
                add(f"stats.{key} is {stats[key]:,} but the shard entries add up to {total:,}")


def open_regular_file(name: str, *, dir_fd: int | None, folder: str | os.PathLike, what: str = "shard"
                      ) -> tuple[int, os.stat_result]:
    """Open ``name`` (in the folder ``dir_fd`` refers to) for reading, as a regular file only.

    A symlink is refused (``lstat``, then ``O_NOFOLLOW``: a shard that points out of the folder is not read), so are
    FIFOs, sockets and devices (``O_NONBLOCK``: opening a FIFO never waits for a writer). The file opened is the one
    checked (same device and inode), so a swap between the check and the open is refused too.

    Returns:
        ``(fd, stat)``: an open descriptor (the caller closes it) and its ``fstat``.

    Raises:
        PackerError: missing, a symlink or not a regular file, or unreadable; the message names ``folder/name``.
    """
    path = Path(folder) / name
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise PackerError(f"{path}: {what} listed in the manifest is missing; the packed folder is incomplete, "
                          "re-run 'packer pack'") from None
    except OSError as e:
        raise PackerError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket")
        raise PackerError(f"{path}: the {what} is {kind}, not a regular file; a packed folder holds its own files "
                          "only (copy the folder with its files, e.g. 'cp -rL', or re-run 'packer pack')")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        raise PackerError(f"{path}: cannot open the {what} ({e.strerror or e}); it changed while being opened, "
                          "try again") from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise PackerError(f"{path}: the {what} was replaced while being opened; try again")
    return fd, now


def open_folder(folder: str | os.PathLike) -> int:
    """A directory descriptor of ``folder`` (the caller closes it): files opened through it all come from this one
    folder, even if another process renames a new version into its place meanwhile.

    Raises:
        PackerError: no such folder, or not a folder.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(folder, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise PackerError(f"{folder}: no such folder") from None
    except OSError as e:
        raise PackerError(f"{folder}: cannot open the folder ({e.strerror or e})") from None


def read_manifest(folder: str | os.PathLike, *, checksum: bool = True, allow_unsealed: bool = False,
                  dir_fd: int | None = None) -> dict:
    """Read and check a packed folder's manifest: its size, JSON, checksum and schema (:func:`manifest_problems`).

    Args:
        folder: the packed folder.
        checksum: check :data:`MANIFEST_CHECKSUM` (``packer verify`` turns it off here and reports it as a check
            of its own, so that the other checks still run on a modified manifest; it also skips the schema).
        allow_unsealed: accept a manifest without :data:`MANIFEST_CHECKSUM` (a folder written by a packer before
            manifest checksums existed), with a warning. By default it is refused: a deleted key looks the same.
        dir_fd: a descriptor of ``folder`` (:func:`open_folder`) to read through, so that the manifest and the
            shards a reader opens through the same descriptor are of one version of the folder.

    Raises:
        PackerError: the path is not a packed folder; its manifest is not a regular file, larger than
            :data:`MAX_MANIFEST_BYTES`, not JSON or nested too deep, of another format version, modified or damaged
            after packing (its checksum differs), without a checksum (unless ``allow_unsealed``), or malformed (the
            message names the field).
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    manifest = _parse_manifest(_read_manifest_bytes(folder, dir_fd), path)
    problems = manifest_problems(manifest)
    if problems and not (isinstance(manifest, dict) and manifest.get(MANIFEST_FORMAT) == FORMAT_NAME
                         and manifest.get(MANIFEST_VERSION) == FORMAT_VERSION):
        raise PackerError(f"{path}: {problems[0]}")
    if not checksum:
        return manifest
    _check_seal(manifest, path, allow_unsealed=allow_unsealed)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise PackerError(f"{path}: malformed manifest: {shown}; the folder is damaged, re-run 'packer pack' "
                          f"('packer verify {folder}' lists every problem)")
    return manifest


def _read_manifest_bytes(folder: Path, dir_fd: int | None) -> bytes:
    """The manifest file's bytes (at most :data:`MAX_MANIFEST_BYTES` + 1), read as a regular file through ``dir_fd``
    (or a descriptor of ``folder`` opened and closed here).

    Raises:
        PackerError: no manifest (not a packed folder), not a regular file, unreadable, or too large.
    """
    path = folder / MANIFEST_FILE
    own_fd = dir_fd is None
    if own_fd:
        dir_fd = open_folder(folder)
    try:
        try:
            os.stat(MANIFEST_FILE, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise PackerError(f"{folder}: not a packed folder (no {MANIFEST_FILE}); create one with 'packer pack'"
                              ) from None
        except OSError:
            pass  # reported by the open below
        fd, st = open_regular_file(MANIFEST_FILE, dir_fd=dir_fd, folder=folder, what="manifest")
        try:
            if st.st_size > MAX_MANIFEST_BYTES:
                raise PackerError(f"{path}: {st.st_size:,} bytes, more than a manifest can be "
                                  f"({MAX_MANIFEST_BYTES:,}); not a packer manifest, re-run 'packer pack'")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read(MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(fd)
    finally:
        if own_fd:
            os.close(dir_fd)


def _parse_manifest(raw: bytes, path: Path):
    """The manifest's JSON (any JSON value), bounded in depth.

    Raises:
        PackerError: not JSON, or nested deeper than :data:`MAX_MANIFEST_DEPTH`.
    """
    try:
        manifest = json.loads(raw)
    except RecursionError:
        raise PackerError(f"{path}: the manifest is nested too deep to be a packer manifest; re-run 'packer pack'"
                          ) from None
    except (OSError, ValueError) as e:
        raise PackerError(f"{path}: unreadable manifest ({str(e)[:200]}); re-run 'packer pack'") from None
    if isinstance(manifest, (dict, list)) and _too_deep(manifest, MAX_MANIFEST_DEPTH):
        raise PackerError(f"{path}: the manifest nests deeper than {MAX_MANIFEST_DEPTH} levels; not a packer manifest, "
                          "re-run 'packer pack'")
    return manifest


def _check_seal(manifest: dict, path: Path, *, allow_unsealed: bool) -> None:
    """:func:`check_manifest_checksum`, and a manifest without a checksum refused unless ``allow_unsealed`` (then
    warned about once per file and process).

    Raises:
        PackerError: the checksum differs, or there is none and ``allow_unsealed`` is False.
    """
    folder = path.parent
    try:
        sealed = check_manifest_checksum(manifest, path)
    except RecursionError:
        raise PackerError(f"{path}: the manifest is nested too deep to be a packer manifest; re-run 'packer pack'"
                          ) from None
    if sealed:
        return
    if not allow_unsealed:
        raise PackerError(
            f"{path}: the manifest has no {MANIFEST_CHECKSUM!r}, so an edit or damage of it cannot be detected "
            f"(a folder written by an older packer, or the key was deleted); check the folder and add one with "
            f"'packer verify {folder} --reseal', or read it as it is with allow_unsealed=True (--allow-unsealed "
            "on the command line)")
    key = os.path.abspath(path)
    if key not in _unsealed_warned:
        _unsealed_warned.add(key)
        log.warning("%s has no %s (written by an older packer): edits to it cannot be detected; add one with "
                    "'packer verify %s --reseal' or re-run 'packer pack'", path, MANIFEST_CHECKSUM, folder)
