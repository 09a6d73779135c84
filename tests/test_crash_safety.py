"""Crash safety: kills, I/O errors and concurrent writers leave no output or a complete one that verifies."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from packer import format as fmt
from packer import writer as writer_mod
from packer.convert import PackConfig, pack_dataset
from packer.errors import PackerError
from packer.input import Columns
from data_samples.synthetic import reference_like_lengths, reference_like_table
from packer.verify import verify_packed
from packer.writer import PackedWriter
from tests._verify_helpers import rows_table, write_stream

REPO = Path(__file__).resolve().parents[1]
KILLS = 10


def _tmp_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(fmt.TMP_DIR_PREFIX)]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    """3,000 reference-like rows (about 4M tokens): ``packer pack`` takes a few seconds here, most of it start-up."""
    path = tmp_path_factory.mktemp("kill") / "in.arrow"
    table = reference_like_table(reference_like_lengths(3_000, seed=7), seed=7)
    return write_stream(table, path, max_chunksize=500)


def _pack_cmd(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "packer", "-q", "pack", str(src), "-o", str(out), "--shard-size", "10", "--verify"]


def _run(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, **kw)


def test_sigkill_at_random_moments_leaves_nothing_or_a_verified_output(big_input, tmp_path):
    """SIGKILL ``packer pack`` at seeded moments: half anywhere in the run (start-up included), half while shards
    are being written (after the temp folder appears). After each kill the output is absent or verifies, and the
    same command, rerun, completes and verifies, with no temp folder left."""
    rng = np.random.default_rng(2024)
    seen = {"absent": 0, "complete": 0, "mid_write": 0}
    for k in range(KILLS):
        out = tmp_path / f"out{k}"
        cmd = _pack_cmd(big_input, out)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k % 2 == 0:
            time.sleep(float(rng.uniform(0.0, 3.0)))
        else:
            deadline = time.monotonic() + 30
            while not _tmp_dirs(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.4)))
        writing = bool(_tmp_dirs(tmp_path))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            seen["complete"] += 1
            report = verify_packed(out, inputs=[big_input])
            assert report.ok, report.format()
        else:
            seen["absent"] += 1
            seen["mid_write"] += writing
        rerun = _run(cmd)
        assert rerun.returncode == 0, rerun.stderr
        report = verify_packed(out, inputs=[big_input])
        assert report.ok, report.format()
        assert not _tmp_dirs(tmp_path)
    assert seen["mid_write"] >= 1, seen  # the test must actually interrupt writes, not only start-ups
    print(f"kills: {seen}")


def _fail_after(monkeypatch, calls: int, err=errno.ENOSPC):
    """Make the shard sink's write raise OSError on its ``calls``-th call (counting from 1)."""
    original = writer_mod.HashingSink.write
    count = {"n": 0}

    def write(self, data):
        count["n"] += 1
        if count["n"] >= calls:
            raise OSError(err, os.strerror(err))
        return original(self, data)

    monkeypatch.setattr(writer_mod.HashingSink, "write", write)
    return count


@pytest.fixture
def small_input(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    return write_stream(rows_table(rng.integers(1, 50, 120).tolist(), labels=True), tmp_path / "in.arrow")


CFG = PackConfig(capacity=64, shard_size=5, columns=Columns(labels="labels"))


@pytest.mark.parametrize("calls", [1, 3, 40, 200])
def test_io_error_mid_shard_leaves_nothing(small_input, tmp_path, monkeypatch, calls):
    out = tmp_path / "out"
    count = _fail_after(monkeypatch, calls)
    with pytest.raises(PackerError, match="No space left on device"):
        pack_dataset(small_input, out, config=CFG, progress=False)
    assert count["n"] >= calls  # the fault fired
    assert not out.exists() and not _tmp_dirs(tmp_path)
    monkeypatch.undo()
    pack_dataset(small_input, out, config=CFG, progress=False)
    assert verify_packed(out, inputs=[small_input]).ok


def test_io_error_writing_the_manifest_leaves_nothing(small_input, tmp_path, monkeypatch):
    def failing(self, name, obj):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(PackedWriter, "_write_json", failing)
    with pytest.raises(PackerError, match="Permission denied"):
        pack_dataset(small_input, tmp_path / "out", config=CFG, progress=False)
    assert not (tmp_path / "out").exists() and not _tmp_dirs(tmp_path)


@pytest.mark.parametrize("exchange", [True, False])
def test_failed_overwrite_keeps_the_old_output(small_input, tmp_path, monkeypatch, exchange):
    """An I/O error while replacing an output leaves the old one in place, complete and verifying."""
    out = tmp_path / "out"
    pack_dataset(small_input, out, config=CFG, progress=False)
    old = json.loads((out / fmt.MANIFEST_FILE).read_text())
    real_rename = os.rename
    if not exchange:
        monkeypatch.setattr(writer_mod, "_exchange", lambda a, b: False)

    def rename(a, b):
        if Path(b) == out and Path(a).name.startswith(fmt.TMP_DIR_PREFIX) and "-old-" not in Path(a).name:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_rename(a, b)

    monkeypatch.setattr(writer_mod.os, "rename", rename)
    if exchange:
        monkeypatch.setattr(writer_mod, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(PackerError, match="could not finish writing"):
        pack_dataset(small_input, out, config=PackConfig(capacity=80, shard_size=5, columns=CFG.columns),
                     overwrite=True, progress=False)
    monkeypatch.undo()
    assert json.loads((out / fmt.MANIFEST_FILE).read_text()) == old
    assert verify_packed(out, inputs=[small_input]).ok
    assert not _tmp_dirs(tmp_path) or all("-old-" not in p.name for p in _tmp_dirs(tmp_path))


def test_overwrite_swaps_in_the_new_output(small_input, tmp_path):
    out = tmp_path / "out"
    pack_dataset(small_input, out, config=CFG, progress=False)
    pack_dataset(small_input, out, config=PackConfig(capacity=80, columns=CFG.columns), overwrite=True,
                 progress=False)
    assert fmt.read_manifest(out)["config"]["capacity"] == 80
    assert verify_packed(out, inputs=[small_input]).ok and not _tmp_dirs(tmp_path)


def test_stale_temp_folders_of_this_output_only_are_removed(small_input, tmp_path):
    mine = tmp_path / f"{fmt.TMP_DIR_PREFIX}out-0123456789ab"
    mine_old = tmp_path / f"{fmt.TMP_DIR_PREFIX}out-old-0123456789ab"
    other = tmp_path / f"{fmt.TMP_DIR_PREFIX}out-2-0123456789ab"  # a live run into "out-2"
    for p in (mine, mine_old, other):
        p.mkdir()
    pack_dataset(small_input, tmp_path / "out", config=CFG, progress=False)
    assert not mine.exists() and not mine_old.exists() and other.exists()


def test_second_writer_fails_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    with PackedWriter(out, n_shards=1):
        with pytest.raises(PackerError, match="another packer run is writing this output"):
            with PackedWriter(out, n_shards=1):
                pass
    assert not out.exists() and not _tmp_dirs(tmp_path)


def test_no_lock_file_is_left_behind(tmp_path, small_input):
    out = tmp_path / "out"
    pack_dataset(small_input, out, config=CFG, progress=False)
    with pytest.raises(PackerError, match="already exists"):  # a refused run (another config: not a rerun)
        pack_dataset(small_input, out, config=PackConfig(capacity=80, columns=CFG.columns), progress=False)
    pack_dataset(small_input, out, config=CFG, progress=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.arrow", "out"]


def test_a_lock_file_deleted_by_its_holder_is_not_trusted(tmp_path, monkeypatch):
    """A run that locked the lock file just before the holder deleted it must notice and lock the new file."""
    out = tmp_path / "out"
    first = PackedWriter(out, n_shards=1)
    lock = first.lock_path
    stale = os.open(lock, os.O_CREAT | os.O_RDWR)  # opened, as a second run would, before the holder's unlink
    os.unlink(lock)
    real_open = os.open

    def open_stale_once(path, *args, **kwargs):
        nonlocal stale
        if stale is not None and os.fspath(path) == os.fspath(lock):
            fd, stale = stale, None
            return fd
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_stale_once)
    with first:  # got the stale inode first, saw the path name nothing (or another file), retried on the path
        assert os.fstat(first._lock_fd).st_ino == os.stat(lock).st_ino
        with pytest.raises(PackerError, match="another packer run is writing this output"):
            with PackedWriter(out, n_shards=1):
                pass
    assert not lock.exists()


def test_concurrent_cli_runs_one_wins(big_input, tmp_path):
    """Two conversions with different seeds into one output at once: exactly one succeeds, the other exits 2
    with a clear message, and the output is the winner's, complete and verifying."""
    out = tmp_path / "out"
    procs = [subprocess.Popen(_pack_cmd(big_input, out)[:-1] + ["--strategy", "shuffle", "--seed", str(s)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in (1, 2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "another packer run is writing this output" in loser or "already exists" in loser, loser
    winner_seed = (1, 2)[[rc for rc, _ in results].index(0)]
    assert fmt.read_manifest(out)["config"]["seed"] == winner_seed
    assert verify_packed(out, inputs=[big_input]).ok and not _tmp_dirs(tmp_path)
