"""Training in the trainers people use: transformers ``Trainer`` (one process, and two under torchrun with
accelerate), TRL's ``SFTTrainer`` on ``datasets.load_from_disk(packed)``, and the wrong ways in, which must raise.

What each model received is recorded and checked against an independent expectation: sequence ``i`` is
``[i + 1] * n_i`` (tests/_torch_helpers.py), so the tokens of a batch name its sequences and so its packs.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate", reason="Trainer needs accelerate: pip install -e .[hf]")

from packer.errors import PackerError  # noqa: E402
from packer.torch import PackedCollator, PackedDataset, PackSampler  # noqa: E402
from tests._hf_helpers import separate_logits, separate_loss_sum  # noqa: E402
from tests._torch_helpers import (  # noqa: E402
    IGNORE,
    REPO,
    expected_sequences,
    make_packed,
    random_lengths,
    run_python,
)

CAPACITY = 64


@pytest.fixture(scope="module")
def lengths():
    return random_lengths(150, capacity=CAPACITY, seed=3)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, lengths):
    return make_packed(tmp_path_factory.mktemp("hf"), lengths, capacity=CAPACITY)


def _pack_of_sequence(folder) -> dict[int, int]:
    """Sequence token -> the pack holding it, read from the folder."""
    ds = PackedDataset(folder, pad=False)
    return {int(t): i for i in range(len(ds)) for t in set(ds[i]["input_ids"].tolist())}


def _packs_in(batch_ids, where: dict[int, int]) -> list[int]:
    return sorted({where[t] for row in batch_ids for t in row if t in where})


def _example(name: str = "hf_trainer"):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_torchrun_two_ranks_train_each_pack_once(packed, tmp_path):
    """The docs recipe under torchrun (gloo, accelerate): every rank trains exactly its PackSampler row, so every
    pack once per epoch and ``global_step`` = steps per epoch; the natural wrong ways raise on every rank."""
    res = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(REPO / "tests" / "_trainer_worker.py"), str(packed), str(tmp_path)], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    where = _pack_of_sequence(packed)
    n = len(PackedDataset(packed))
    seen = []
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        received = [_packs_in(b, where) for b in got["packs"]]
        assert all(len(b) == 1 for b in received)  # batch size 1: one pack per forward
        received = [b[0] for b in received]
        # exactly this rank's row of the balanced plan, in order (an independent sampler for the expectation)
        want = PackSampler(PackedDataset(packed), num_replicas=2, rank=rank, batch_size=1, grad_accum=2)
        assert received == want.plan(0)[rank].tolist() == got["plan"][rank]
        assert got["global_step"] == got["steps_per_epoch"] == want.steps_per_epoch
        seen += received
        wrong_trainer, wrong_prepare, global_plain = got["errors"]
        assert wrong_trainer and "second time" in wrong_trainer and "PackedTrainer" in wrong_trainer
        assert wrong_prepare and "second time" in wrong_prepare
        assert global_plain and "layout='rank'" in global_plain
        prepared = PackSampler(PackedDataset(packed), num_replicas=2, rank=rank).plan(0)[rank].tolist()
        assert [b[0] for b in got["prepared"]] == prepared
    assert len(seen) == len(set(seen)) == n - n % 2
    # Trainer.evaluate on 5 packs, 2 ranks, batch 1: rank 0 scores packs 0, 2, 4 and rank 1 packs 1, 3 and 0 again
    # (accelerate's even_batches); each step's loss is normalised by the label tokens of that step on both ranks
    # (transformers 5.17 passes num_items_in_batch in evaluation too), the repeat's own loss is dropped by
    # gather_for_metrics, and eval_loss is the mean of the 5 kept values: what docs/huggingface.md describes
    evals = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    eval_packs = [[p for b in got["eval_packs"] for p in _packs_in(b, where)] for got in evals]
    assert eval_packs == [[0, 2, 4], [1, 3, 0]]
    mean, tokens = evals[0]["alone"], evals[0]["label_tokens"]
    kept = []
    for a, b in ((0, 1), (2, 3), (4, 0)):
        step = tokens[a] + tokens[b]
        kept += [2 * mean[a] * tokens[a] / step, 2 * mean[b] * tokens[b] / step]
    assert evals[0]["eval_loss"] == pytest.approx(sum(kept[:5]) / 5, rel=1e-5)


def test_trainer_one_process_and_its_wrong_ways(packed, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    trainer = _example().build_trainer(str(packed), str(tmp_path), batch_size=2, grad_accum=3)
    where = _pack_of_sequence(packed)
    received = []
    trainer.model.register_forward_pre_hook(lambda m, a, kw: received.append(kw["input_ids"].tolist()),
                                            with_kwargs=True)
    trainer.train()
    n = len(PackedDataset(packed))
    sampler = PackSampler(PackedDataset(packed), batch_size=2, grad_accum=3)
    assert trainer.state.global_step == sampler.steps_per_epoch
    packs = [_packs_in(b, where) for b in received]
    plan = sampler.plan(0)[0].tolist()
    assert packs == [sorted(plan[i : i + 2]) for i in range(0, n, 2)]
    # Trainer's default remove_unused_columns=True drops cu_seqlens before a plain Trainer's collator sees it
    from transformers import Trainer

    plain = Trainer(model=trainer.model, args=trainer.args, train_dataset=PackedDataset(packed),
                    data_collator=PackedCollator(keys="hf"))
    with pytest.raises(PackerError, match="remove_unused_columns=False"):
        plain.train()


def test_rank_from_environment_without_process_group_raises(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(PackerError, match="WORLD_SIZE=2.*init_process_group"):
        PackSampler(np.ones(10))
    assert PackSampler(np.ones(10), num_replicas=2, rank=1).rank == 1  # explicit arguments need no group
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert PackSampler(np.ones(10)).num_replicas == 1


def test_trl_sft_trainer_padding_free_trains_each_sequence_alone(packed, lengths, tmp_path, monkeypatch):
    """``SFTTrainer`` on ``datasets.load_from_disk(packed)``: position ids restart at every sequence, the stored
    labels are kept, and the loss is that of the sequences run alone."""
    pytest.importorskip("trl")
    from trl import SFTConfig

    from packer.torch.hf import check_sft_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(PackerError, match="padding_free=True.*max_length=None"):
        check_sft_config(SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    with pytest.raises(PackerError, match="packing=False"):
        check_sft_config(SFTConfig(output_dir=str(tmp_path), padding_free=True, packing=True, max_length=64,
                                   use_cpu=True))
    import datasets

    legacy = datasets.load_from_disk(str(packed)).remove_columns(["seq_lengths"])  # a folder packed before it
    with pytest.raises(PackerError, match="no 'seq_lengths' column"):
        check_sft_config(SFTConfig(output_dir=str(tmp_path), padding_free=True, max_length=None, use_cpu=True),
                         legacy)
    files = sorted(p.name for p in packed.iterdir())
    example = _example("trl_sft")
    model, tokenizer = example.tiny_model_and_tokenizer(len(lengths) + 2)
    trainer = example.build_trainer(str(packed), str(tmp_path), model, tokenizer, max_steps=2, learning_rate=1e-3)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, pos, labels = (batch[k][0] for k in ("input_ids", "position_ids", "labels"))
    assert batch["input_ids"].shape[0] == 1  # padding-free: the two packs back to back
    starts = [0] + [t for t in range(1, ids.shape[0]) if ids[t] != ids[t - 1]]  # a sequence is one token value
    bounds = starts + [ids.shape[0]]
    assert batch["cu_seq_lens_q"].tolist() == bounds
    want = expected_sequences(lengths)
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert pos[a:b].tolist() == list(range(b - a))
        want_ids, want_labels = want[int(ids[a])]
        assert ids[a:b].tolist() == want_ids.tolist()
        assert labels[a] == IGNORE and labels[a + 1 : b].tolist() == want_labels[1:].tolist()
    assert len(starts) > 2  # more sequences than packs: the packs were not taken as one sequence each
    # the loss TRL trains on equals the token-weighted loss of the sequences run alone
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
    cu = torch.tensor(bounds, dtype=torch.int32)
    total, count = separate_loss_sum(separate_logits(model, ids[None], cu), labels[None], cu)
    assert float(loss) == pytest.approx(float(total) / count, rel=1e-5)
    model.train()
    trainer.train()
    assert trainer.state.global_step == 2
    assert sorted(p.name for p in packed.iterdir()) == files  # TRL wrote no cache files into the packed folder
