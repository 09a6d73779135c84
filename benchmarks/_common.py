"""Helpers shared by the benchmark scripts: timing with medians, peak memory of a child process, sample data."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "_data"  # git-ignored
sys.path.insert(0, str(REPO))


def median_time(fn, *, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_measured(argv: list[str], *, env: dict | None = None) -> dict:
    """Run a command; return wall seconds and peak memory of its process tree (sampled every 20 ms).

    ``peak_rss`` counts every resident page, including pages of memory-mapped input files that the kernel can
    drop at any time; ``peak_anon`` counts only anonymous memory (heap, arrays), which is what must stay bounded.
    """
    import psutil

    t = time.perf_counter()
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": pythonpath, **(env or {})})
    peak = {"rss": 0, "anon": 0}
    done = threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not done.is_set():
            rss = anon = 0
            try:
                for q in [p, *p.children(recursive=True)]:
                    with open(f"/proc/{q.pid}/status") as fh:
                        status = dict(line.split(":", 1) for line in fh if ":" in line)
                    rss += int(status.get("VmRSS", "0 kB").split()[0]) * 1024
                    anon += int(status.get("RssAnon", "0 kB").split()[0]) * 1024
            except (psutil.Error, OSError, ValueError):
                pass
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            done.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{err}")
    return {"seconds": time.perf_counter() - t, "peak_rss": peak["rss"], "peak_anon": peak["anon"], "stdout": out}


def full_reference_set() -> Path:
    """The 99,388-row reference-like set (about 133M tokens with labels), made once (what `make data-full` makes)."""
    path = REPO / "data_samples" / "reference_full"
    if not (path / "state.json").exists():
        from data_samples.synthetic import REFERENCE_ROWS, write_reference_like

        print(f"writing {path} (once) ...", flush=True)
        write_reference_like(path, rows=REFERENCE_ROWS, seed=0, num_shards=4)
    return path


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"
