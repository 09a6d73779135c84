"""The example training loop: on the sample data, under torchrun with two CPU ranks (gloo), and resumed."""
from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest

from packer.torch import PackedDataset

from tests._torch_helpers import REPO, make_packed, random_lengths, run_python

EXAMPLE = str(REPO / "examples" / "train_tiny.py")
SMALL_MODEL = ["--dim", "16", "--layers", "1", "--heads", "2", "--vocab", "256"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """About 20 packs of 128 tokens: a whole epoch takes a few seconds."""
    return make_packed(tmp_path_factory.mktemp("ex"), random_lengths(150, capacity=128, seed=21), capacity=128)


def _losses(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"step \d+ loss ([0-9.naif]+)", out)]


def _seen(folder, rank=0) -> list[int]:
    return json.loads((folder / f"rank{rank}.json").read_text())["epochs"]["0"]


def test_torchrun_two_ranks_see_every_pack_once(small, tmp_path):
    n = len(PackedDataset(small))
    res = run_python(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", EXAMPLE, "--data", str(small),
         "--grad-accum", "2", "--batch-size", "2", "--log-packs", str(tmp_path), *SMALL_MODEL],
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rank0, rank1 = _seen(tmp_path, 0), _seen(tmp_path, 1)
    assert len(rank0) == len(rank1) == n // 2
    assert len(set(rank0 + rank1)) == len(rank0) + len(rank1) == n - n % 2
    losses = _losses(res.stdout)
    assert len(losses) == math.ceil((n // 2) / 4) and all(math.isfinite(x) for x in losses)


def _example():
    spec = importlib.util.spec_from_file_location("train_tiny", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_mid_epoch_continues_the_stream(small, tmp_path):
    train = _example().train
    n = len(PackedDataset(small))
    common = ["--data", str(small), "--grad-accum", "2", "--seed", "3", *SMALL_MODEL]
    whole = train(common)
    first = train([*common, "--steps", "3", "--save-state", str(tmp_path / "state")])
    second = train([*common, "--resume", str(tmp_path / "state")])
    a, b = first["seen"][0], second["seen"][0]
    assert len(a) == 6 and a + b == whole["seen"][0]
    assert len(a + b) == n
    # the resumed run continues the same training: its losses are the uninterrupted run's
    assert first["losses"] + second["losses"] == pytest.approx(whole["losses"], rel=1e-4)
    assert second["steps"] == whole["steps"]


def test_example_on_sample_data(tmp_path):
    """``make pack`` then the example: the reference-like sample at the default 20,000-token capacity."""
    from packer.convert import PackConfig, pack_dataset
    from packer.input import Columns

    out = tmp_path / "packed"
    pack_dataset(REPO / "data_samples" / "reference_like", out, progress=False,
                 config=PackConfig(columns=Columns(labels="labels")))
    result = _example().train(["--data", str(out), "--steps", "1", "--grad-accum", "1", *SMALL_MODEL])
    (loss,) = result["losses"]
    assert abs(loss - math.log(256)) < 1.0  # an untrained model's loss, over real label tokens
