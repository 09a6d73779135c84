"""Engines that run shard jobs: in this process, in worker processes, or as Ray tasks.

Every engine runs :func:`packer.jobs.run_shard_job` on the jobs it is given and hands each
:class:`packer.jobs.ShardResult` to a callback in the parent (which updates the one progress bar and records the
shard). At most ``2 * workers`` jobs are in flight, so memory holds a bounded number of shards whatever the size of
the dataset; results may arrive out of order, and the parent orders them by shard index.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

from packer.errors import ConfigError, PackerError
from packer.jobs import ShardJob, ShardResult, build_job_table, run_shard_job, write_job_table
from packer.shards import ShardBuffers

log = logging.getLogger(__name__)

ENGINES = {
    "local": "this machine: --workers processes gather and write shards (1: in this process)",
    "ray": "Ray tasks on a local Ray instance, or on the cluster at --ray-address (pip install 'packer-llm[ray]')",
}
DEFAULT_ENGINE = "local"
RAY_INSTALL = "pip install 'packer-llm[ray]' (or pip install 'ray>=2.9')"


def check_engine(engine: str, workers: int) -> None:
    """Raise :class:`packer.errors.ConfigError` for an unknown engine or a bad worker count."""
    if engine not in ENGINES:
        raise ConfigError("pack_dataset", "engine", engine, f"unknown engine; choose one of {', '.join(ENGINES)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("pack_dataset", "workers", workers, "must be a positive number of processes")


def import_ray():
    """Import Ray, or raise :class:`PackerError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PackerError(f"engine='ray' (--engine ray) needs Ray, which is not installed; {RAY_INSTALL}") from None
    return ray


def run_jobs(jobs: Iterable[ShardJob], on_result: Callable[[ShardResult], None], *, engine: str = DEFAULT_ENGINE,
             workers: int = 1, ray_address: str | None = None) -> int:
    """Run every job and call ``on_result`` for each result; return the number of parallel slots used."""
    check_engine(engine, workers)
    if engine == "ray":
        return _run_ray(jobs, on_result, workers=workers, address=ray_address)
    if workers == 1:
        _run_pipelined(jobs, on_result)
        return 1
    return _run_processes(jobs, on_result, workers=workers)


def _run_pipelined(jobs: Iterable[ShardJob], on_result) -> None:
    """One process, two stages: this thread gathers shard k+1 while a writer thread hashes, writes and fsyncs
    shard k. The gather kernel, the checksum and file writes all release the GIL, so the stages overlap; on the full
    reference-like set this took the in-process conversion from 2.3 s to 1.1 s. At most two shards are in memory."""
    # two buffer sets, alternating: shard k is built in set k % 2 only after shard k - 2 has been written
    buffers = (ShardBuffers(), ShardBuffers())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="packer-writer") as writer:
        pending = None
        try:
            for k, job in enumerate(jobs):
                t = time.perf_counter()
                table, n_labels = build_job_table(job, buffers=buffers[k % 2])
                gather_s = time.perf_counter() - t
                if pending is not None:
                    on_result(pending.result())
                pending = writer.submit(write_job_table, job, table, n_labels, gather_s=gather_s)
            if pending is not None:
                on_result(pending.result())
                pending = None
        finally:
            if pending is not None:
                pending.cancel()
                try:  # let a running write finish (or fail) before the caller removes the temp folder
                    pending.result()
                except BaseException:
                    pass


def _context():
    # forkserver: workers fork from a clean server process (no threads of the parent's tqdm/pyarrow pools). No
    # modules are preloaded into it: the forkserver is one per process, so a preload would change every later
    # user's workers too; each worker imports packer.jobs itself when it unpickles its first job (once per worker).
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def _run_processes(jobs: Iterable[ShardJob], on_result, *, workers: int) -> int:
    it = iter(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        pending = set()
        try:
            for job in _take(it, 2 * workers):
                pending.add(pool.submit(run_shard_job, job))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_result(fut.result())
                    for job in _take(it, 1):
                        pending.add(pool.submit(run_shard_job, job))
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return workers


def _take(it, n):
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def _run_ray(jobs: Iterable[ShardJob], on_result, *, workers: int, address: str | None) -> int:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # a local instance sized by --workers (default: every core), without the dashboard
            ray.init(num_cpus=workers if workers > 1 else os.cpu_count(), include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
        started = True
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=0)(run_shard_job)
        it = iter(jobs)
        pending = [remote.remote(job) for job in _take(it, 2 * slots)]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    on_result(_ray_get(ray, ref))
                    pending.extend(remote.remote(job) for job in _take(it, 1))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return slots
    finally:
        if started:
            ray.shutdown()


def _ray_get(ray, ref) -> ShardResult:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if hasattr(e, "cause") else None
        if isinstance(cause, PackerError):
            raise PackerError(str(cause)) from None
        raise
