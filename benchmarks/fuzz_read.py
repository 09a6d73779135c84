"""The long run of the read-side fuzz (tests/test_read_fuzz.py runs a short one in the suite).

    python benchmarks/fuzz_read.py --cases 1000 --seed 1 --workdir /tmp/fuzz_read [--json out.json]

Each case damages a copy of a small packed folder (byte flips in shards, crafted cu_seqlens and offsets, crafted
manifests re-sealed with packer.format.seal_manifest, symlinks, FIFOs) and reads it through PackedDataset (and a
DataLoader with 2 workers every 4th case), PackSampler, packer stats, report and verify; see
tests/_read_fuzz_worker.py for the cases and what each outcome means. Prints the outcome counts and every failure
(crash by a signal, hang, traceback, silent difference, verify missed); exit status 1 if there is any.
One worker process at a time: pin it to one core with ``taskset -c 0`` if the machine is shared.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._read_fuzz_worker import drive  # noqa: E402

GOOD = ("ok", "error", "explained")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fuzz_read"))
    ap.add_argument("--json", type=Path, help="write every case's result here")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a case may take before it counts as a hang")
    args = ap.parse_args()
    t0 = time.perf_counter()

    def log(r: dict) -> None:  # failures as they happen, progress every 100 cases
        if r["outcome"] not in GOOD:
            print(f"FAIL case {r['case']} {r['name']}: {r['outcome']}: {r['detail'][-300:]}", flush=True)
        elif r["case"] % 100 == 99:
            print(f"... {r['case'] + 1} cases, {time.perf_counter() - t0:.0f}s", flush=True)

    results = drive(seed=args.seed, cases=args.cases, workdir=args.workdir, timeout=args.timeout, log=log)
    seconds = time.perf_counter() - t0
    counts = collections.Counter(r["outcome"] for r in results)
    kinds = collections.Counter(r["name"].split()[0] for r in results)
    print(f"{len(results)} cases (seed {args.seed}) in {seconds:.0f}s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    explained = collections.Counter(r["name"] for r in results if r["outcome"] == "explained")
    print("explained (token/label values changed, seen only by checksums): "
          + (", ".join(f"{k} {v}" for k, v in sorted(explained.items())) or "none"))
    bad = [r for r in results if r["outcome"] not in GOOD]
    for r in bad:
        print(f"failed: case {r['case']} {r['name']}: {r['outcome']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
