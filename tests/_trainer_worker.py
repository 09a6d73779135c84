"""Run under ``torchrun --nproc_per_node 2`` by tests/test_hf_trainers.py: the Trainer recipe of
examples/hf_trainer.py, recording what each rank's model actually receives, then the wrong ways of plugging
``PackSampler`` in, which must raise.

Writes ``OUT/rank{r}.json``: ``packs`` (each micro-batch's input_ids), ``global_step``, ``steps_per_epoch`` and
``plan`` (the sampler's plan); ``eval_packs``, ``eval_loss``, ``alone`` and ``label_tokens`` of ``Trainer.evaluate``
on 5 packs; ``errors`` (messages of the wrong paths); ``prepared`` (the packs of an ``accelerator.prepare`` loader).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from packer.errors import PackerError
from packer.torch import PackedCollator, PackedDataset, PackSampler


def main(packed: str, out: str) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    spec = importlib.util.spec_from_file_location("hf_trainer", example)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trainer = module.build_trainer(packed, out, batch_size=1, grad_accum=2)
    received = []

    def record(_module, args, kwargs):
        received.append(kwargs["input_ids"].tolist())

    trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    trainer.train()
    rank = dist.get_rank()
    sampler = trainer._get_train_sampler()
    result = {"packs": received[:], "global_step": trainer.state.global_step,
              "steps_per_epoch": sampler.steps_per_epoch, "plan": sampler.plan(0).tolist(), "errors": []}

    # evaluation with Trainer's own sharding, 5 packs on 2 ranks (docs/huggingface.md says what it computes)
    received.clear()
    five = torch.utils.data.Subset(trainer.train_dataset, range(5))
    metrics = trainer.evaluate(eval_dataset=five)
    result["eval_packs"] = received[:]
    collate = PackedCollator(keys="hf")
    trainer.model.eval()
    with torch.no_grad():
        alone = [float(trainer.model(**collate([five[i]])).loss) for i in range(5)]
    result["eval_loss"], result["alone"] = metrics["eval_loss"], alone
    result["label_tokens"] = [five[i]["num_label_tokens"] for i in range(5)]

    # the natural wrong ways: a per-rank sampler under Trainer, and under accelerator.prepare
    from transformers import Trainer

    class NaiveTrainer(Trainer):
        def _get_train_sampler(self, *a, **k):
            return PackSampler(self.train_dataset, batch_size=1, grad_accum=2)

    naive = NaiveTrainer(model=trainer.model, args=trainer.args, train_dataset=trainer.train_dataset,
                         data_collator=PackedCollator(keys="hf"))
    ds = PackedDataset(packed)
    for attempt in (
        naive.train,
        lambda: next(iter(naive.accelerator.prepare(DataLoader(ds, sampler=PackSampler(ds),
                                                               collate_fn=PackedCollator())))),
        lambda: next(iter(DataLoader(ds, sampler=PackSampler(ds, layout="global"), collate_fn=PackedCollator()))),
    ):
        try:
            attempt()
            result["errors"].append(None)
        except PackerError as e:
            result["errors"].append(str(e))
    # the right way under accelerator.prepare: layout="global"
    loader = naive.accelerator.prepare(
        DataLoader(ds, sampler=PackSampler(ds, layout="global"), collate_fn=PackedCollator(), batch_size=1)
    )
    result["prepared"] = [b["index"].tolist() for b in loader]
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
