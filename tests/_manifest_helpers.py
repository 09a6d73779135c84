"""Manifest surgery for tests that plant defects: edit ``packer.json`` and re-seal it (or not).

A test that damages a manifest field to exercise a *later* check (a shard's size, another format version) re-seals
the manifest with :func:`packer.format.seal_manifest`, so that the manifest checksum does not fire first; the tests
of the checksum itself edit with ``seal=False``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from packer import format as fmt


def load_manifest(folder: Path) -> dict:
    """The manifest as stored (no check at all)."""
    return json.loads((Path(folder) / fmt.MANIFEST_FILE).read_text())


def rewrite_manifest(folder: Path, mutate: Callable[[dict], None], *, seal: bool = True) -> dict:
    """Apply ``mutate`` (in place) to ``folder``'s manifest and write it back, indented as the writer does.

    ``seal``: record the edited manifest's checksum (a deliberate edit); False keeps the old checksum (damage the
    checksum must catch). Returns the manifest written.
    """
    manifest = load_manifest(folder)
    mutate(manifest)
    if seal:
        manifest = fmt.seal_manifest(manifest)
    (Path(folder) / fmt.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def set_capacity(manifest: dict, capacity: int) -> None:
    """Edit ``config.capacity`` together with the statistics that depend on it (``stats.capacity`` and
    ``stats.padding_tokens``), as a deliberate edit would: a capacity the stats contradict is refused."""
    manifest[fmt.MANIFEST_CONFIG][fmt.CONFIG_CAPACITY] = capacity
    stats = manifest[fmt.MANIFEST_STATS]
    stats["capacity"] = capacity
    stats["padding_tokens"] = stats["packs"] * capacity - stats["tokens_out"]
