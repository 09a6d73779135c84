"""Pack tokenized Arrow/Parquet shards into fixed-capacity packed shards.

examples:
  packer pack data_samples/reference_like --output packed/
  packer pack 'shards/*.parquet' --output packed/ --max-length 8192 --overflow split
  packer pack train.arrow --output packed/ --labels-column labels --strategy bfd --overwrite
  packer pack big/ --output packed/ --workers 8
  packer pack big/ --output packed/ --plan grouped --group-size 16
  packer pack s3://bucket/tokenized/ --output s3://bucket/packed/ --engine ray --ray-address auto
  packer pack data_samples/reference_like --output packed/ --verify
  packer pack my_datasetdict/ --split train --output packed/ --max-loss 0.01
  packer pack packed/ --output packed-8k/ --max-length 8192 --overflow split
  packer pack data_samples/reference_like --output packed/ --pad-to-multiple-of 16

Input (see docs/input.md): token ids, one list per row. A 'labels' (or 'loss_mask') column in every file is used
unless --no-labels; a packed folder given alone is repacked from its sequences. Columns that only some files have,
several datasets in one folder, padded rows (an attention_mask with zeros) and text are refused with what to do.
"""
from __future__ import annotations

import argparse
import sys

from packer import format as fmt
from packer.convert import LOSS_WARNING, PackConfig, pack_dataset
from packer.engines import DEFAULT_ENGINE, ENGINES
from packer.jobs import DEFAULT_PLAN, PLANS
from packer.plan import DEFAULT_OVERFLOW, DEFAULT_FILLER, DEFAULT_STRATEGY, OVERFLOW_POLICIES, STRATEGIES
from packer.errors import PackerError
from packer.errors import ConfigError
from packer.input import Columns
from packer.stats import format_stats

NAME = "pack"
HELP = "pack tokenized shards into packed shards with cu_seqlens"


def _choices_help(choices: dict) -> str:
    return "; ".join(f"{k}: {v.rstrip('.')}" for k, v in choices.items()).replace("%", "%%") + " (default %(default)s)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="tokenized input: save_to_disk folder, .arrow or .parquet files, folders or globs")
    p.add_argument("-o", "--output", required=True, help="packed folder to create")
    p.add_argument("--max-length", type=int, default=fmt.DEFAULT_CAPACITY,
                   help="tokens per pack (default %(default)s)")
    p.add_argument("--strategy", choices=list(STRATEGIES), default=DEFAULT_STRATEGY,
                   help=_choices_help(STRATEGIES))
    p.add_argument("--filler", type=float, default=DEFAULT_FILLER,
                   help="for --strategy mixed: share of sequences (the shortest) held back to fill gaps "
                   "(default %(default)s)")
    p.add_argument("--overflow", choices=list(OVERFLOW_POLICIES), default=DEFAULT_OVERFLOW,
                   help=_choices_help(OVERFLOW_POLICIES))
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffling strategies (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=fmt.DEFAULT_SHARD_SIZE,
                   help="packs per output shard (default %(default)s)")
    p.add_argument("--input-column", default="input_ids", help="token column (default %(default)s)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels-column", default=None,
                        help="label column, same lengths as the tokens, -100 = not trained on "
                        "(default: 'labels' if the input has it)")
    labels.add_argument("--loss-mask-column", default=None,
                        help="0/1 column, same lengths as the tokens, 1 = trained on")
    labels.add_argument("--no-labels", action="store_true",
                        help="ignore any labels column: every token is trained on")
    p.add_argument("--split", default=None, metavar="NAME",
                   help="pack split NAME of a DatasetDict folder, or of a folder holding several datasets "
                   "(train/, test/...), which are refused without it")
    p.add_argument("--max-loss", type=float, default=None, metavar="FRACTION",
                   help="fail, writing nothing, if more than this share of the input's tokens or sequences is lost "
                   "(dropped, truncated, or left with no trained token); default: warn above "
                   f"{LOSS_WARNING:.0%}".replace("%", "%%"))
    p.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                   help="pad every sequence to a multiple of N tokens (planned at that length) and record the "
                   "padded boundaries as cu_seqlens_padded, for context parallelism (N a multiple of 2 x CP size) "
                   "and FP8/tensor-core alignment; --max-length must be a multiple of N; see "
                   "docs/context_parallel.md (default: no padding)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    scale = p.add_argument_group("scale (see docs/scale.md)")
    scale.add_argument("--workers", type=int, default=1,
                       help="processes that gather and write shards in parallel; same output bytes whatever the "
                       "number (default %(default)s)")
    scale.add_argument("--engine", choices=list(ENGINES), default=DEFAULT_ENGINE, help=_choices_help(ENGINES))
    scale.add_argument("--ray-address", default=None,
                       help="Ray cluster to run on with --engine ray ('auto' or host:port); default: a local "
                       "Ray instance with --workers CPUs (all cores if 1)")
    scale.add_argument("--plan", choices=list(PLANS), default=DEFAULT_PLAN, help=_choices_help(PLANS))
    scale.add_argument("--group-size", type=int, default=1,
                       help="input files per group with --plan grouped (default %(default)s)")
    p.add_argument("--verify", action="store_true",
                   help="before the output takes its name, check it against the input as 'packer verify --input' "
                   "does; on a defect, no output is left")


FLAGS = {
    "capacity": "--max-length", "strategy": "--strategy", "seed": "--seed", "filler": "--filler",
    "overflow": "--overflow", "shard_size": "--shard-size", "plan": "--plan", "group_size": "--group-size",
    "max_loss": "--max-loss", "input_ids": "--input-column", "labels": "--labels-column",
    "loss_mask": "--loss-mask-column", "split": "--split", "pad_to_multiple_of": "--pad-to-multiple-of",
    "workers": "--workers", "engine": "--engine",
}
"""The flag of each parameter of PackConfig, Columns and pack_dataset, for messages."""


def _columns(args) -> Columns:
    if args.loss_mask_column:
        return Columns(args.input_column, loss_mask=args.loss_mask_column)
    if args.labels_column:
        return Columns(args.input_column, labels=args.labels_column)
    if args.no_labels:
        return Columns(args.input_column, labels=None)
    return Columns(args.input_column)  # detect over all input files, as pack_dataset does


def run(args: argparse.Namespace) -> int:
    try:
        config = PackConfig(
            capacity=args.max_length,
            strategy=args.strategy,
            seed=args.seed,
            filler=args.filler,
            overflow=args.overflow,
            shard_size=args.shard_size,
            columns=_columns(args),
            plan=args.plan,
            group_size=args.group_size,
            max_loss=args.max_loss,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        manifest = pack_dataset(args.inputs, args.output, config=config, overwrite=args.overwrite,
                                progress=not args.quiet and sys.stderr.isatty(), verify=args.verify,
                                workers=args.workers, engine=args.engine, ray_address=args.ray_address,
                                split=args.split)
    except ConfigError as e:  # name the flag the user typed, not the Python parameter
        flag = FLAGS.get(e.param)
        if flag is None:
            raise
        raise PackerError(e.message_for(f"{flag} {e.value}")) from None
    if not args.quiet:  # -q: no summary, only warnings and errors (`packer stats` prints the statistics again)
        print(f"wrote {args.output}: {len(manifest[fmt.MANIFEST_SHARDS])} shard(s)")
        print(format_stats(manifest[fmt.MANIFEST_STATS], manifest[fmt.MANIFEST_RUN]["seconds"]))
    return 0
