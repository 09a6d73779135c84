"""Slow, obviously-correct references for :mod:`packer.report`, and the reference run's setup."""
from __future__ import annotations

import numpy as np

# the rows of shared/seed/padding_vs_packing.md, in its order, under its sections
REFERENCE_SECTIONS = [
    ("Dataset", ["Total samples", "Samples analyzed"]),
    ("Batch Configuration",
     ["per_device_train_batch_size", "effective_batch_size", "num_gpus", "gradient_accumulation_steps"]),
    ("Sequence Configuration", ["global_max_length", "avg_sequence_length", "padding_overhead"]),
    ("Training Dynamics",
     ["num_train_epochs", "steps_per_epoch", "total_optimizer_steps", "samples_per_step", "total_samples_seen"]),
    ("Efficiency Metrics", ["packing_efficiency", "samples_per_pack", "data_loss"]),
    ("Performance Estimates", ["relative_training_speed", "gpu_memory_usage"]),
]
REFERENCE_HEADINGS = ["# Padding vs Packing: Configuration Comparison", "## Training Configuration Comparison",
                      "## Key Takeaways", "## Recommendation"]


def slow_padding(lengths, *, batch_size, seed, shuffles):
    """Padding-mode micro-batches one by one: (tokens per epoch, slots per epoch, sum of size*longest^2, peak)."""
    lengths = [int(x) for x in lengths if x > 0]
    rng = np.random.default_rng(seed)
    slots = 0
    attention = 0
    peak = 0
    for _ in range(shuffles):
        perm = rng.permutation(len(lengths))
        order = [lengths[i] for i in perm]
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            slots += len(batch) * max(batch)
            attention += len(batch) * max(batch) ** 2
            peak = max(peak, len(batch) * max(batch))
    return sum(lengths), slots / shuffles, attention / shuffles, peak


def slow_table_rows(markdown: str):
    """(section, [row labels]) pairs of the first Markdown table, in order."""
    sections = []
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith("| Parameter"):
            continue
        label = line.split("|")[1].strip()
        if label.startswith("**") and label.endswith("**"):
            sections.append((label.strip("*"), []))
        else:
            sections[-1][1].append(label)
    return sections


def expected_steps(samples, epochs: str, batch):
    """The documented rounding with integers only: ceil(samples * epochs / batch), epochs a decimal string."""
    whole, _, frac = epochs.partition(".")
    num, den = int(whole + frac), 10 ** len(frac)
    return -(-samples * num // (batch * den))


def png_ok(path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(24)
    # PNG signature, then the IHDR chunk with a non-zero width and height
    return (head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
            and int.from_bytes(head[16:20], "big") > 0 and int.from_bytes(head[20:24], "big") > 0)


def sampler_loop(pack_sequences, *, world, batch_size, grad_accum, epochs, seed=0):
    """What a training loop over real ``PackSampler``s gets: (optimizer steps, packs, sequences) over the run.

    One sampler per rank, iterated epoch by epoch as a ``DataLoader(batch_size=...)`` would (micro-batches are
    consecutive chunks, the last one short), ``grad_accum`` micro-batches per optimizer step and a partial step at
    the end of an epoch (``Trainer``), stopping after ``ceil(epochs x steps per epoch)`` steps (``max_steps``).
    Checks on the way that no pack goes to two ranks in an epoch and every rank gets ``n // world``.
    """
    from fractions import Fraction

    from packer.torch import PackSampler

    n = len(pack_sequences)
    costs = np.asarray(pack_sequences, dtype=np.float64)  # any costs: balancing only reorders
    samplers = [PackSampler(costs, num_replicas=world, rank=r, batch_size=batch_size, grad_accum=grad_accum,
                            seed=seed) for r in range(world)]
    max_steps = None
    steps = packs = sequences = 0
    epoch = 0
    while max_steps is None or steps < max_steps:
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        flat = [i for mine in per_rank for i in mine]
        assert len(flat) == len(set(flat)) and all(len(mine) == n // world for mine in per_rank)
        micro = [[mine[i : i + batch_size] for i in range(0, len(mine), batch_size)] for mine in per_rank]
        epoch_steps = -(-len(micro[0]) // grad_accum)
        if max_steps is None:
            max_steps = -(-Fraction(str(float(epochs))) * epoch_steps // 1)
        for k in range(epoch_steps):
            if steps == max_steps:
                break
            steps += 1
            for rank_micro in micro:
                for batch in rank_micro[k * grad_accum : (k + 1) * grad_accum]:
                    packs += len(batch)
                    sequences += int(sum(pack_sequences[i] for i in batch))
        epoch += 1
    return steps, packs, sequences


__all__ = ["REFERENCE_SECTIONS", "REFERENCE_HEADINGS", "slow_padding", "slow_table_rows", "expected_steps",
           "png_ok", "sampler_loop"]
