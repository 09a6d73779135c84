"""Compare padding and packing for a training run, computed from the data and the actual packing plan.

INPUT is tokenized input (planned here as 'packer pack' would plan it; only the lengths are read) or a folder
written by 'packer pack' (its plan is read back from the shards). The defaults are the reference run: 4 GPUs,
effective batch 128, 4 epochs, per-device batch 2 (padding) and 1 (packing), capacity 20,000.

examples:
  packer report data_samples/reference_like
  packer report packed/ --format json
  packer report data/ --num-gpus 8 --effective-batch-size 256 --epochs 3 --max-length 8192 --overflow split
  packer report data/ --eval-steps 500 --save-steps 1000 --warmup-steps 100 --step-setting save_delay_steps=2000
  packer report data/ --num-params 7B --plot report.png
  packer report data/ --padding-full-rows      # the reference's padding run: every row padded whole
"""
from __future__ import annotations

import argparse
import logging

from packer import format as fmt
from packer.errors import PackerError
from packer.input import Columns
from packer.plan import DEFAULT_FILLER, DEFAULT_OVERFLOW, DEFAULT_STRATEGY, OVERFLOW_POLICIES, STRATEGIES
from packer.plot import check_plot_path, plot_report, require_matplotlib
from packer.report import (
    REFERENCE_EFFECTIVE_BATCH,
    REFERENCE_EPOCHS,
    REFERENCE_NUM_GPUS,
    REFERENCE_PACKING_BATCH,
    REFERENCE_PADDING_BATCH,
    ModelShape,
    TrainingSetup,
    DATA_LOSS_WARNING,
    is_packed_folder,
    parse_count,
    report_from_input,
    report_from_packed,
    render_config,
    render_json,
    render_markdown,
)

log = logging.getLogger(__name__)

NAME = "report"
HELP = "compare padding and packing for a training run (steps, padding, speed, recommended config)"

# plan options: None means "not given", so a packed folder can tell a conflicting option from a default
_PLAN_OPTIONS = {"max_length": ("capacity", fmt.DEFAULT_CAPACITY), "strategy": ("strategy", DEFAULT_STRATEGY),
                 "overflow": ("overflow", DEFAULT_OVERFLOW), "seed": ("seed", 0), "filler": ("filler", DEFAULT_FILLER)}


def _step_setting(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=STEPS, e.g. save_delay_steps=2000")
    try:
        return name.strip(), int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: STEPS must be an integer") from None


def _count(text: str) -> int:
    try:
        return parse_count(text)
    except PackerError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="tokenized input (save_to_disk folder, .arrow/.parquet files, folders, globs) or one "
                   "packed folder")
    run = p.add_argument_group("training run")
    run.add_argument("--num-gpus", type=int, default=REFERENCE_NUM_GPUS,
                     help="data-parallel GPUs (default %(default)s)")
    run.add_argument("--effective-batch-size", type=int, default=REFERENCE_EFFECTIVE_BATCH,
                     help="samples per optimizer step over all GPUs: rows (padding) or packs (packing) "
                     "(default %(default)s)")
    run.add_argument("--epochs", type=float, default=REFERENCE_EPOCHS, help="epochs, may be fractional "
                     "(default %(default)g)")
    run.add_argument("--padding-batch-size", type=int, default=REFERENCE_PADDING_BATCH,
                     help="per-device batch in padding mode (default %(default)s)")
    run.add_argument("--packing-batch-size", type=int, default=REFERENCE_PACKING_BATCH,
                     help="per-device batch in packing mode, in packs (default %(default)s)")
    run.add_argument("--padding-seed", type=int, default=0,
                     help="seed of the simulated padding-mode shuffles (default %(default)s)")
    run.add_argument("--sampler-seed", type=int, default=0,
                     help="PackSampler's seed in the packing run: it picks the packs each epoch leaves out "
                     "(default %(default)s)")
    run.add_argument("--padding-full-rows", action="store_true",
                     help="pad every row whole in the padding column (the reference's padding run) instead of "
                     "the same sequences as the packs hold; the columns then compare different data")
    run.add_argument("--loss-warning", type=float, default=DATA_LOSS_WARNING, metavar="FRACTION",
                     help="warn (and do not recommend packing) when the overflow policy or the sampler loses more "
                     "than this share of the rows, tokens or packs (default %(default)g)")
    plan = p.add_argument_group("packing plan (tokenized input; a packed folder has its own)")
    plan.add_argument("--max-length", type=int, default=None,
                      help=f"tokens per pack (default {fmt.DEFAULT_CAPACITY})")
    plan.add_argument("--strategy", choices=list(STRATEGIES), default=None,
                      help=f"packing strategy (default {DEFAULT_STRATEGY}; see 'packer pack --help')")
    plan.add_argument("--overflow", choices=list(OVERFLOW_POLICIES), default=None,
                      help=f"sequences longer than --max-length: {', '.join(OVERFLOW_POLICIES)} "
                      f"(default {DEFAULT_OVERFLOW})")
    plan.add_argument("--seed", type=int, default=None, help="seed of the shuffling strategies (default 0)")
    plan.add_argument("--filler", type=float, default=None,
                      help=f"for --strategy mixed, the share of shortest sequences held back to fill gaps "
                      f"(default {DEFAULT_FILLER})")
    plan.add_argument("--input-column", default="input_ids", help="token column (default %(default)s)")
    plan.add_argument("--allow-unsealed", action="store_true",
                      help=f"read a packed folder whose {fmt.MANIFEST_FILE} has no checksum (an older packer's)")
    model = p.add_argument_group("model (switches the cost model from tokens to FLOPs with attention)")
    model.add_argument("--hidden-size", type=int, help="model width")
    model.add_argument("--num-layers", type=int, help="transformer blocks")
    model.add_argument("--num-params", type=_count, help="parameter count: 7B, 350M, 7e9, ...")
    steps = p.add_argument_group("step-based settings of the padding run, rescaled for packing")
    steps.add_argument("--eval-steps", type=int, help="eval_steps")
    steps.add_argument("--save-steps", type=int, help="save_steps")
    steps.add_argument("--warmup-steps", type=int, help="warmup_steps")
    steps.add_argument("--logging-steps", type=int, help="logging_steps")
    steps.add_argument("--step-setting", type=_step_setting, action="append", default=[], metavar="NAME=STEPS",
                       help="any other step-based setting, e.g. save_delay_steps=2000 (repeatable)")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=["markdown", "json"], default="markdown",
                     help="report format (default %(default)s)")
    out.add_argument("--config-format", choices=["yaml", "json"], default="yaml",
                     help="format of the recommended configuration block (default %(default)s)")
    out.add_argument("--config-only", action="store_true",
                     help="print only the recommended TrainingArguments block (in --config-format)")
    out.add_argument("--plot", metavar="FILE.png",
                     help="also draw token slots (real and padding) and optimizer steps per mode and the length "
                     "distribution with the capacity marked (needs matplotlib: pip install 'packer-llm[plot]')")


def _setup(args) -> TrainingSetup:
    settings = [(name, getattr(args, name)) for name in ("eval_steps", "save_steps", "warmup_steps", "logging_steps")
                if getattr(args, name) is not None]
    return TrainingSetup(
        num_gpus=args.num_gpus,
        effective_batch_size=args.effective_batch_size,
        epochs=args.epochs,
        padding_batch_size=args.padding_batch_size,
        packing_batch_size=args.packing_batch_size,
        padding_seed=args.padding_seed,
        step_settings=tuple(settings + list(args.step_setting)),
        sampler_seed=args.sampler_seed,
        padding_full_rows=args.padding_full_rows,
        loss_warning=args.loss_warning,
    )


def _model(args) -> ModelShape | None:
    if args.hidden_size is None and args.num_layers is None and args.num_params is None:
        return None
    return ModelShape(hidden_size=args.hidden_size, num_layers=args.num_layers, num_params=args.num_params)


def run(args: argparse.Namespace) -> int:
    setup = _setup(args)
    model = _model(args)
    if args.plot:
        require_matplotlib()  # fail before the work, not after it
        check_plot_path(args.plot)
    packed = [p for p in args.inputs if is_packed_folder(p)]
    if packed:
        if len(args.inputs) > 1:
            raise PackerError(f"{packed[0]}: a packed folder is reported on its own; pass it as the only INPUT")
        report = report_from_packed(packed[0], setup=setup, model=model, allow_unsealed=args.allow_unsealed)
        for option, (key, _default) in _PLAN_OPTIONS.items():
            given = getattr(args, option)
            if given is not None and given != report.source[key]:
                flag = "--" + option.replace("_", "-")
                raise PackerError(
                    f"{packed[0]}: was packed with {flag} {report.source[key]}, not {given}; omit {flag} to report "
                    "on the folder as packed, or give the tokenized input to plan it another way"
                )
    else:
        plan = {key: default if getattr(args, option) is None else getattr(args, option)
                for option, (key, default) in _PLAN_OPTIONS.items()}
        report = report_from_input(args.inputs, columns=Columns(args.input_column), setup=setup, model=model, **plan)
    if args.config_only or args.format == "json":
        for w in report.warnings:  # the Markdown shows them; the other outputs are for machines, so say it here
            log.warning("warning (%s): %s", w.code, w.message)
    if args.config_only:
        print(render_config(report, fmt_name=args.config_format))
    elif args.format == "json":
        print(render_json(report))
    else:
        print(render_markdown(report, config_format=args.config_format), end="")
    if args.plot:
        plot_report(report, args.plot)
    return 0
