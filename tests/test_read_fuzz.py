"""Seeded fuzz of the read side: damaged shards and crafted (re-sealed) manifests never crash, hang, print a
traceback or silently change what the training job reads (tests/_read_fuzz_worker.py; the long run is
benchmarks/fuzz_read.py)."""
from __future__ import annotations

import collections
import json

from tests._read_fuzz_worker import drive

FUZZ_CASES = 60  # 10 of each kind (flips, region flips, crafted cu_seqlens, crafted offsets, manifests, files)
FUZZ_SEED = 0


def test_read_fuzz(tmp_path):
    results = drive(seed=FUZZ_SEED, cases=FUZZ_CASES, workdir=tmp_path, timeout=120)
    assert [r["case"] for r in results] == list(range(FUZZ_CASES))
    bad = [r for r in results if r["outcome"] not in ("ok", "error", "explained")]
    assert not bad, json.dumps(bad[:3], indent=1)
    # an item differs from the original only where the damage lies in token or label values
    for r in results:
        if r["outcome"] == "explained":
            assert r["name"].startswith("flip"), r
    outcomes = collections.Counter(r["outcome"] for r in results)
    assert outcomes["error"] >= FUZZ_CASES // 2, outcomes  # the damage is found, not merely survived
    crafted = [r for r in results if r["name"].startswith(("cu ", "offset ", "file "))]
    assert all(r["outcome"] == "error" for r in crafted), [r for r in crafted if r["outcome"] != "error"]
