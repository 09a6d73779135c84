"""The records of a verification: the checks, a defect, a check's outcome, the report, and the collector the
checks add defects to (capped at ``max_defects`` per check)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packer import format as fmt


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


_BLOCK_TOKENS = 1 << 22  # token comparisons run in blocks of 4M tokens: 3 int64 temporaries of 32 MB each


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


class _Collector:
    def __init__(self, max_defects: int):
        self.max = max_defects
        self.defects: dict[str, list[Defect]] = {name: [] for name in CHECKS}
        self.counts = dict.fromkeys(CHECKS, 0)
        self.detail: dict[str, str] = {}
        self.ran: set[str] = set()

    def add(self, check: str, message: str, *, shard=None, pack=None, row=None) -> None:
        self.counts[check] += 1
        if len(self.defects[check]) < self.max:
            self.defects[check].append(Defect(check, message, shard, None if pack is None else int(pack),
                                              None if row is None else int(row)))

    def room(self, check: str) -> int:
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


def _is_int(x, lo=0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo
