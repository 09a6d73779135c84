"""Train a tiny causal transformer on a packed folder, on CPU, in one process or under torchrun (gloo).

    make pack                                                          # data_samples/ -> packed/
    python examples/train_tiny.py --data packed --steps 4
    torchrun --nproc_per_node 2 examples/train_tiny.py --data packed --steps 4

What it shows, in the order a real loop needs it:

* ``PackedDataset`` + ``PackSampler`` (every rank its own packs, balanced attention cost per optimizer step) +
  ``PackedCollator`` in a ``DataLoader`` with optional worker processes;
* attention restricted to each packed sequence (``varlen_attention`` from ``cu_seqlens``; on a GPU, call
  ``flash_attn_varlen_func`` with the same arguments);
* the loss normalised by the label tokens of the *whole* optimizer step on *all* ranks: every micro-batch's summed
  token loss is divided by that one number, so the step's gradient is the same as for one big batch of the same
  sequences, whatever the micro-batch split (averaging per micro-batch weighs a pack of few label tokens as
  much as a full one);
* mid-epoch resume: ``--save-state`` / ``--resume`` store the sampler position with the model.

The model folds token ids modulo ``--vocab`` so that the logits of a 20,000-token pack fit a CPU (20,000 x 32,000
floats would be 2.6 GB); it is a smoke test of the data path, not a language model.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from packer.format import IGNORE_INDEX
from packer.torch import PackedCollator, PackedDataset, PackSampler, varlen_attention

log = logging.getLogger("train_tiny")


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        t, dim = x.shape  # the batch flattened to T tokens, as flash-attn varlen wants it
        q, k, v = self.qkv(self.norm1(x)).view(t, 3, self.heads, dim // self.heads).unbind(1)
        x = x + self.proj(varlen_attention(q, k, v, cu_seqlens).reshape(t, dim))
        return x + self.mlp(self.norm2(x))


class TinyCausalLM(nn.Module):
    """Token + learned position embeddings (positions restart per sequence), pre-norm blocks, tied head."""

    def __init__(self, *, vocab: int, dim: int, layers: int, heads: int, max_positions: int):
        super().__init__()
        self.vocab = vocab
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        for emb in (self.tok, self.pos):  # small embeddings: the tied head starts near uniform (loss ~ log vocab)
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, input_ids, position_ids, cu_seqlens):
        b, length = input_ids.shape
        x = (self.tok(input_ids % self.vocab) + self.pos(position_ids)).view(b * length, -1)
        for block in self.blocks:
            x = block(x, cu_seqlens)
        return (self.norm(x) @ self.tok.weight.T).view(b, length, self.vocab)


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, vocab: int) -> torch.Tensor:
    """Sum (not mean) of the next-token losses: logits at t against labels at t + 1, within each row."""
    target = labels[:, 1:] % vocab
    target = torch.where(labels[:, 1:] == IGNORE_INDEX, IGNORE_INDEX, target)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="packed", help="packed folder (make pack writes packed/)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="stop after this many optimizer steps in all (0: no limit)")
    p.add_argument("--batch-size", type=int, default=1, help="packs per micro-batch")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--log-packs", type=Path, help="write the pack indices each rank trained on to DIR/rank<r>.json")
    p.add_argument("--save-state", type=Path, help="at the end, save model, optimizer and sampler to FILE.rank<r>")
    p.add_argument("--resume", type=Path, help="resume from a --save-state FILE (same world size)")
    return p.parse_args(argv)


def train(argv=None) -> dict:
    """Run the example; return ``{"losses": [per step], "seen": {epoch: [pack indices]}, "steps": int}``."""
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s", stream=sys.stdout)
    torch.manual_seed(args.seed)  # the same initial weights on every rank

    ds = PackedDataset(args.data)
    sampler = PackSampler(ds, num_replicas=world, rank=rank, batch_size=args.batch_size,
                          grad_accum=args.grad_accum, seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, collate_fn=PackedCollator(),
                        num_workers=args.workers, persistent_workers=False)
    model = TinyCausalLM(vocab=args.vocab, dim=args.dim, layers=args.layers, heads=args.heads,
                         max_positions=ds.capacity)
    ddp = nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    start_epoch, step, consumed = 0, 0, 0
    if args.resume:
        state = torch.load(f"{args.resume}.rank{rank}", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        sampler.load_state_dict(state["sampler"])
        start_epoch, step, consumed = state["sampler"]["epoch"], state["step"], state["sampler"]["consumed"]
    log.info("%d packs of %d tokens, %d ranks, %d packs per rank per step, %d steps per epoch",
             len(ds), ds.capacity, world, sampler.packs_per_step, sampler.steps_per_epoch)

    seen: dict[int, list[int]] = {}
    losses: list[float] = []
    done = False
    t0 = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        if epoch != start_epoch:
            consumed = 0
        batches = iter(loader)
        while not done:
            micro = [b for _, b in zip(range(args.grad_accum), batches)]
            if not micro:
                break
            # one normaliser for the whole optimizer step: label tokens of all its micro-batches on all ranks
            n_labels = torch.tensor([float(sum(b["num_label_tokens"] for b in micro))])
            if distributed:
                dist.all_reduce(n_labels)
            total = 0.0
            for i, b in enumerate(micro):
                last = i == len(micro) - 1
                sync = contextlib.nullcontext() if last or not distributed else ddp.no_sync()
                with sync:
                    logits = ddp(b["input_ids"], b["position_ids"], b["cu_seqlens"])
                    loss = summed_loss(logits, b["labels"], args.vocab)
                    # DDP averages gradients over ranks; multiply back so the step's gradient is the sum / n_labels
                    (loss * world / n_labels.clamp(min=1)).backward()
                total += loss.detach().item()
                seen.setdefault(epoch, []).extend(b["index"].tolist())
                consumed += len(b["index"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            report = torch.tensor([total])
            if distributed:
                dist.all_reduce(report)
            losses.append(float(report) / max(float(n_labels), 1.0))
            log.info("epoch %d step %d loss %.4f (%d label tokens)", epoch, step, losses[-1], int(n_labels))
            done = args.steps > 0 and step >= args.steps
        if done:
            break
    log.info("%d steps in %.1fs", step, time.perf_counter() - t0)

    if args.log_packs:
        args.log_packs.mkdir(parents=True, exist_ok=True)
        (args.log_packs / f"rank{rank}.json").write_text(
            json.dumps({"rank": rank, "world": world, "epochs": {str(e): v for e, v in seen.items()}}))
    if args.save_state:
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                    "sampler": sampler.state_dict(consumed=consumed)}, f"{args.save_state}.rank{rank}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"losses": losses, "seen": seen, "steps": step}


def main(argv=None) -> int:
    train(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
