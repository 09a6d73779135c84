"""The records of a verification: the checks, a defect, a check's outcome, the report, the collector the checks
add defects to (capped at ``max_defects`` per check), and what the checks hand each other: the usable config
(:class:`VerifyConfig`), a loaded shard (:class:`LoadedShard`), its sequence table (:class:`ShardSequences`, all shards'
in :class:`Sequences`), the pieces the input should give (:class:`ExpectedPieces`) and the running :class:`Totals`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.input import Columns


CHECKS = {
    "manifest": "manifest readable, known format version, config and shard list well-formed",
    "manifest_checksum": f"the manifest's own {fmt.CHECKSUM} checksum equals its content's (everything but the run "
    "timings): not modified or damaged since packing",
    "files": "every listed shard present at its recorded size, no unlisted data file, state.json lists the shards",
    "checksums": f"every shard's {fmt.CHECKSUM} checksum equals the manifest's",
    "schema": "every shard is an Arrow IPC stream with the format's schema, no nulls, valid offsets, rows as listed",
    "capacity": "every pack holds 1..capacity tokens and as many labels as tokens",
    "cu_seqlens": "cu_seqlens starts at 0, strictly increases, ends at the pack's length, one entry per sequence + 1",
    "labels": "label -100 at every sequence's first token; token ids >= 0; labels -100 or >= 0, equal to the "
    "tokens where the config has no labels column (or -100 where it has a loss mask)",
    "provenance": "seq_index within the input's rows, seq_offset as the overflow policy makes it, no (row, offset) "
    "twice, split chunks contiguous",
    "counts": "rows, sequences, tokens and label tokens per shard and in total equal the manifest and its stats",
    "input": "the input has the rows and the fingerprint the manifest records",
    "coverage": "every input sequence is in exactly one pack, or empty, dropped or truncated as the overflow policy "
    "says, and the statistics' counts of each add up exactly",
    "tokens": "every packed sequence's tokens and labels equal the input's (labels masked at sequence starts)",
    "alignment": "with --pad-to-multiple-of N: config.pad_to_multiple_of valid, every shard has cu_seqlens_padded, "
    "each sequence's padded span is its length rounded up to a multiple of N, every padded pack fits the capacity, "
    "and the alignment statistics add up; without it: no shard has cu_seqlens_padded",
}


INPUT_CHECKS = ("input", "coverage", "tokens")


DEFAULT_MAX_DEFECTS = 20


_NAME_WIDTH = max(map(len, CHECKS))


BLOCK_TOKENS = 1 << 22  # token comparisons run in blocks of 4M tokens: 3 int64 temporaries of 32 MB each


@dataclass(frozen=True)
class Defect:
    """One thing that is wrong. ``pack`` is the global pack index; ``row`` the input row of the sequence."""

    check: str
    message: str
    shard: str | None = None
    pack: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        where = []
        if self.shard is not None:
            where.append(self.shard)
        if self.pack is not None:
            where.append(f"pack {self.pack}")
        if self.row is not None:
            where.append(f"input row {self.row}")
        return f"{self.check}: {', '.join(where) + ': ' if where else ''}{self.message}"


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome: ``status`` is ``"ok"``, ``"failed"`` or ``"skipped"`` (with the reason in ``detail``)."""

    name: str
    description: str
    status: str
    detail: str
    defects: int


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_packed` checked and found.

    Attributes:
        folder: the packed folder.
        checks: one :class:`CheckResult` per entry of :data:`CHECKS`.
        defects: the defects, at most ``max_defects`` per check (``n_defects`` counts them all).
        n_defects: all defects found.
        packs, sequences, tokens: what the shards hold (as read).
        input_rows: rows of the input compared, or None without an input.
        seconds: time taken.
    """

    folder: str
    checks: tuple[CheckResult, ...]
    defects: tuple[Defect, ...]
    n_defects: int
    packs: int
    sequences: int
    tokens: int
    input_rows: int | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.n_defects == 0

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.name for c in self.checks if c.status == "failed"]

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED with {self.n_defects:,} defect(s) in {', '.join(self.failed())}"
        against = f", compared with {self.input_rows:,} input rows" if self.input_rows is not None else ""
        return (f"verify {self.folder}: {verdict}: {self.packs:,} packs, {self.sequences:,} sequences, "
                f"{self.tokens:,} tokens{against} in {self.seconds:.2f}s")

    def format(self) -> str:
        """The summary, one line per check, then the defects (multi-line, for people)."""
        lines = [self.summary()]
        for c in self.checks:
            mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[c.status]
            lines.append(f"  {mark} {c.name:<{_NAME_WIDTH}} {c.detail}")
        if self.defects:
            lines.append("defects:" if len(self.defects) == self.n_defects
                         else f"defects (first {len(self.defects)} of {self.n_defects:,}):")
            lines.extend(f"  {d}" for d in self.defects)
        return "\n".join(lines)


@dataclass(frozen=True)
class VerifyConfig:
    """The manifest's config as the checks use it, once the manifest check found it usable.

    Attributes:
        capacity: ``config.capacity``, tokens per pack (1..:data:`packer.format.MAX_CAPACITY`).
        overflow: ``config.overflow``, a key of :data:`packer.plan.OVERFLOW_POLICIES`.
        columns: ``config.columns``, the input columns the folder was packed from.
        pad_to_multiple_of: ``config.pad_to_multiple_of``: N of a ``--pad-to-multiple-of`` folder, None without
            (or when it is bad: then ``pad_problem`` holds the manifest schema's message).
        pad_problem: :func:`packer.format.manifest_field_problems`' message about a bad
            ``config.pad_to_multiple_of``, reported by the ``alignment`` check; None when it is sound.
    """

    capacity: int
    overflow: str
    columns: Columns
    pad_to_multiple_of: int | None = None
    pad_problem: str | None = None


@dataclass(frozen=True)
class LoadedShard:
    """One shard as the checks read it: the decoded table and its columns as flat numpy arrays (zero-copy views of
    the memory-mapped file). Offsets are int64 (packs + 1,) rebased to start at 0; values keep the format's dtypes.

    Attributes:
        name: the shard's file name.
        pack_base: global index of its first pack.
        ids_off, ids: ``input_ids`` offsets and int32 (tokens,) values.
        labels: ``labels`` int32 (tokens,), same offsets as ``ids``.
        cu_off, cu: ``cu_seqlens`` offsets and int32 (sequences + packs,) values.
        seq_off, seq_index: ``seq_index`` offsets and int64 (sequences,) values (``seq_offset`` has the same).
        seq_offset: ``seq_offset`` int32 (sequences,).
    """

    name: str
    pack_base: int
    ids_off: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    cu_off: np.ndarray
    cu: np.ndarray
    seq_off: np.ndarray
    seq_index: np.ndarray
    seq_offset: np.ndarray

    @cached_property
    def pack_tokens(self) -> np.ndarray:
        """int64 (packs,): each pack's tokens (from the ``input_ids`` offsets)."""
        return np.diff(self.ids_off)

    @cached_property
    def pack_sequences(self) -> np.ndarray:
        """int64 (packs,): each pack's sequences (from the ``seq_index`` offsets)."""
        return np.diff(self.seq_off)

    @cached_property
    def pack_cu_entries(self) -> np.ndarray:
        """int64 (packs,): each pack's ``cu_seqlens`` entries (sequences + 1 in a sound pack)."""
        return np.diff(self.cu_off)

    @property
    def label_tokens(self) -> int:
        """Tokens trained on: labels other than :data:`packer.format.IGNORE_INDEX`."""
        return int(np.count_nonzero(self.labels != fmt.IGNORE_INDEX))


@dataclass(frozen=True)
class DecodedShard:
    """A shard's bytes decoded as an Arrow stream with one of the format's schemas (:data:`packer.format.SCHEMA`,
    ``LEGACY_SCHEMA`` or ``ALIGNED_SCHEMA``), before its buffers are validated: decoded once, read by the shard
    checks and by the alignment check.

    Attributes:
        name: the shard's file name.
        table: the decoded table (zero-copy over the memory-mapped file).
    """

    name: str
    table: pa.Table


@dataclass(frozen=True)
class Sequences:
    """Packed sequences, one entry each, in shard order: one shard's, or every loaded shard's (:meth:`concat`).

    Attributes:
        pack: int64 (n,), the global index of the sequence's pack.
        k: int64 (n,), the sequence's index within its pack.
        row: int64 (n,), its input row (``seq_index``).
        offset: int64 (n,), its first token's offset in that row (``seq_offset``).
        length: int64 (n,), its tokens from ``cu_seqlens`` (0 where the pack has the wrong number of entries).
        good: bool (n,), the pack's ``cu_seqlens`` are sound, so the sequence's boundaries can be trusted.
    """

    pack: np.ndarray
    k: np.ndarray
    row: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    good: np.ndarray

    @classmethod
    def concat(cls, parts: list[Sequences]) -> Sequences:
        """The sequences of ``parts`` (at least one) back to back, as a plain :class:`Sequences`."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Sequences)})


@dataclass(frozen=True)
class ShardSequences(Sequences):
    """One shard's :class:`Sequences`, with where each starts in the shard.

    Attributes:
        start: int64 (n,), the sequence's first token's index into the shard's flat ``ids``/``labels``.
    """

    start: np.ndarray

    def without_start(self) -> Sequences:
        """The same arrays as a plain :class:`Sequences` (``start`` means nothing across shards)."""
        return Sequences(**{f.name: getattr(self, f.name) for f in fields(Sequences)})


@dataclass(frozen=True)
class ExpectedPieces:
    """The pieces the overflow policy makes of the input's rows (computed independently of :mod:`packer.plan`).

    Attributes:
        first: int64 (rows,), row ``r``'s pieces are ``first[r]:first[r] + count[r]``.
        count: int64 (rows,), pieces of each row (0 for an empty or dropped row).
        row: int64 (pieces,), each piece's input row.
        start: int64 (pieces,), its offset in the row (piece ``k`` of a row starts at ``k * capacity``).
        length: int64 (pieces,), its tokens.
        lengths: int64 (rows,), the input rows' lengths.
        recomputed: the statistics recomputed from the input, keyed by the manifest's ``stats`` names
            (``sequences_in``, ``tokens_in``, ..., ``tokens_out``).
    """

    first: np.ndarray
    count: np.ndarray
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    lengths: np.ndarray
    recomputed: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Totals:
    """What the loaded shards hold, added up shard by shard.

    Attributes:
        packs, sequences, tokens: rows, sequences and tokens of the shards read so far.
        label_tokens: their tokens trained on (labels other than -100).
    """

    packs: int = 0
    sequences: int = 0
    tokens: int = 0
    label_tokens: int = 0


class Collector:
    """What the checks add their defects to: every defect counted, the first ``max_defects`` of each check kept.

    Attributes:
        defects: check name -> the defects kept (at most ``max``).
        counts: check name -> every defect found, kept or not.
        detail: check name -> the text of its ok line (what was checked), or why it was skipped.
        ran: the checks that ran (the rest are reported as skipped).
    """

    def __init__(self, max_defects: int):
        self.max = max_defects
        self.defects: dict[str, list[Defect]] = {name: [] for name in CHECKS}
        self.counts = dict.fromkeys(CHECKS, 0)
        self.detail: dict[str, str] = {}
        self.ran: set[str] = set()

    def add(self, check: str, message: str, *, shard=None, pack=None, row=None) -> None:
        """Count one defect of ``check``; keep it while the check has room."""
        self.counts[check] += 1
        if len(self.defects[check]) < self.max:
            self.defects[check].append(Defect(check, message, shard, None if pack is None else int(pack),
                                              None if row is None else int(row)))

    def room(self, check: str) -> int:
        """How many more defects of ``check`` would be kept."""
        return self.max - len(self.defects[check])

    def many(self, check: str, where: np.ndarray, describe) -> None:
        """Record a defect at each index of ``where``: the first few listed via ``describe(i) -> (message,
        keywords for add)``, all counted."""
        n = int(where.shape[0])
        listed = min(n, self.room(check))
        for i in where[:listed]:
            message, kw = describe(int(i))
            self.add(check, message, **kw)
        self.counts[check] += n - listed

