"""The manifest checksum: what it covers, its canonical form, and how readers treat it."""
from __future__ import annotations

import json

import pytest

from packer import format as fmt
from packer.convert import PackConfig, pack_dataset
from packer.errors import PackerError
from tests._manifest_helpers import load_manifest, rewrite_manifest
from tests._verify_helpers import rows_table, write_stream


@pytest.fixture
def out(tmp_path):
    src = write_stream(rows_table([5, 9, 3, 7, 2, 0, 11]), tmp_path / "in.arrow")
    out = tmp_path / "out"
    pack_dataset(src, out, config=PackConfig(capacity=16, shard_size=2), progress=False)
    return out


def _leaves(obj, path=()):
    """Every (path, value) of a JSON tree's scalars."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


def test_written_manifest_is_sealed_and_readable(out):
    text = (out / fmt.MANIFEST_FILE).read_text()
    m = json.loads(text)
    assert text.startswith('{\n  "format": ') and list(m)[-1] == fmt.MANIFEST_CHECKSUM  # indented, checksum last
    assert m[fmt.MANIFEST_CHECKSUM] == fmt.manifest_checksum(m)
    assert len(m[fmt.MANIFEST_CHECKSUM]) == fmt.CHECKSUM_HEX_DIGITS
    # the canonical form, spelled out independently of format.py
    import xxhash

    covered = {k: v for k, v in m.items() if k not in ("manifest_checksum", "run")}
    canonical = json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()
    assert m[fmt.MANIFEST_CHECKSUM] == xxhash.xxh3_128(canonical).hexdigest()
    assert fmt.check_manifest_checksum(m, out / fmt.MANIFEST_FILE) is True


def test_every_covered_value_is_protected_and_run_is_not(out):
    m = load_manifest(out)
    leaves = [(p, v) for p, v in _leaves(m) if p[0] not in fmt.MANIFEST_UNCHECKED]
    assert len(leaves) > 40
    for path, value in leaves:
        edited = json.loads(json.dumps(m))
        parent = edited
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value + 1 if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            (not value if isinstance(value, bool) else f"{value}x")
        with pytest.raises(PackerError, match="modified or damaged after packing"):
            fmt.check_manifest_checksum(edited, out / fmt.MANIFEST_FILE)
    # run (timings, workers) differs between two runs of one command, so the checksum leaves it out
    edited = json.loads(json.dumps(m))
    edited[fmt.MANIFEST_RUN]["seconds"]["total"] += 1
    assert fmt.check_manifest_checksum(edited, out / fmt.MANIFEST_FILE)


def test_layout_and_key_order_do_not_matter(out):
    m = load_manifest(out)
    shuffled = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(m.items())}
    (out / fmt.MANIFEST_FILE).write_text(json.dumps(shuffled, sort_keys=True))  # one line, sorted
    assert fmt.read_manifest(out) == m


@pytest.mark.parametrize("stored", [None, 7, "abc", "0" * 32, "F" * 32])
def test_bad_checksum_values(out, stored):
    rewrite_manifest(out, lambda m: m.update({fmt.MANIFEST_CHECKSUM: stored}), seal=False)
    with pytest.raises(PackerError, match=r"packer\.json: the manifest was modified or damaged after packing"):
        fmt.read_manifest(out)
    fmt.read_manifest(out, checksum=False)  # verify reads it this way and reports the checksum as a check


def test_seal_round_trips_what_a_reader_parses(out):
    m = load_manifest(out)
    m["extra"] = {"t": (1, 2), "f": 0.1 + 0.2, "big": 2**70, "name": "caf\u00e9 \udcff"}  # tuple, float, surrogate
    sealed = fmt.seal_manifest(m)
    (out / fmt.MANIFEST_FILE).write_text(json.dumps(sealed, indent=2))
    assert fmt.read_manifest(out)["extra"]["t"] == [1, 2]
    assert fmt.seal_manifest(sealed) == sealed  # sealing is idempotent


def test_already_packed_detection_ignores_a_modified_manifest(out, tmp_path):
    """The rerun shortcut ('already holds this input packed') must not trust an edited manifest."""
    src = tmp_path / "in.arrow"
    rewrite_manifest(out, lambda m: m["stats"].update(packs=m["stats"]["packs"] + 1), seal=False)
    with pytest.raises(PackerError, match="already exists; pass --overwrite"):
        pack_dataset(src, out, config=PackConfig(capacity=16, shard_size=2), progress=False)
    pack_dataset(src, out, config=PackConfig(capacity=16, shard_size=2), overwrite=True, progress=False)
    assert fmt.check_manifest_checksum(load_manifest(out), out / fmt.MANIFEST_FILE) is True  # sealed anew
