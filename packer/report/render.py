"""Rendering of a :class:`packer.report.Report`: Markdown, JSON and the configuration blocks users paste.

Pure functions of the report's plain data; nothing here computes a figure (that is :mod:`packer.report.comparison`).

* :func:`render_markdown`: the reference's sections and rows, then warnings, takeaways, the cost model and the
  recommendation with its blocks.
* :func:`render_config`: the packing run's Hugging Face ``TrainingArguments`` fields as YAML or JSON
  (``TrainingArguments(output_dir=..., **block)`` accepts it).
* :func:`render_packer_settings`: the ``packer pack`` command and the ``PackSampler`` call, kept apart from the
  trainer's fields.
* :func:`render_json`: :meth:`Report.to_dict` as JSON.
"""
from __future__ import annotations

import json

from packer.errors import PackerError

ROW_ORDER = (
    ("Dataset", ("total_samples", "samples_analyzed")),
    ("Batch Configuration",
     ("per_device_train_batch_size", "effective_batch_size", "num_gpus", "gradient_accumulation_steps")),
    ("Sequence Configuration", ("global_max_length", "avg_sequence_length", "padding_overhead")),
    ("Training Dynamics",
     ("num_train_epochs", "steps_per_epoch", "total_optimizer_steps", "samples_per_step", "total_samples_seen")),
    ("Efficiency Metrics", ("packing_efficiency", "samples_per_pack", "data_loss")),
    ("Performance Estimates", ("relative_training_speed", "gpu_memory_usage")),
)
ROW_LABELS = {
    "total_samples": "Total samples",
    "samples_analyzed": "Samples analyzed",
}
_INTS = ("total_samples", "samples_analyzed", "per_device_train_batch_size", "effective_batch_size", "num_gpus",
         "gradient_accumulation_steps", "total_optimizer_steps")


def _int(v) -> str:
    return f"{int(v):,}"


def _steps_text(v: float) -> str:
    return f"{v:,.1f}" if abs(v - round(v)) > 1e-9 else f"{int(round(v)):,}"


def _epochs_text(v) -> str:
    return f"{v:g}"


def _share(v: float) -> str:
    return f"{v:.3%}" if 0 < v < 0.001 or 0.999 < v < 1 else f"{v:.2%}"  # 99.998% is not 100.00%


def _cell(mode: str, name: str, col: dict) -> str:
    v = col[name]
    if name in _INTS:
        return _int(v)
    if name == "total_samples_seen":
        return _int(v) if col.get("total_samples_seen_exact", True) else f"~{int(v):,}"
    if name == "global_max_length":
        return f"{v:,} (dynamic)" if mode == "padding" else f"{v:,}"
    if name == "avg_sequence_length":
        return f"{v:,.0f}"
    if name in ("padding_overhead", "packing_efficiency"):
        return _share(v)
    if name == "num_train_epochs":
        return _epochs_text(v)
    if name == "steps_per_epoch":
        return _steps_text(v)
    if name == "samples_per_step":
        return _int(v) if mode == "padding" else f"{v:,.1f}"
    if name == "samples_per_pack":
        return "1" if mode == "padding" else f"{v:.2f}"
    if name == "data_loss":
        return f"{v:.2%}" if v == 0 or v >= 0.001 else f"{v:.3%}"
    if name == "relative_training_speed":
        return "1.0×" if mode == "padding" else f"{v:.2f}×"
    if name == "gpu_memory_usage":
        return "Baseline" if mode == "padding" else f"{v:.2f}× of the padding peak"
    raise AssertionError(name)


def render_config(report, *, fmt_name: str = "yaml") -> str:
    """The packing run's ``TrainingArguments`` fields as YAML (with comments) or JSON.

    Only ``TrainingArguments`` field names: the packer settings (max length, strategy, GPUs, effective batch)
    are in :func:`render_packer_settings`, the other rescaled step settings in ``report.other_step_settings``.

    Raises:
        PackerError: an unknown format.
    """
    cfg = report.recommended_config
    if fmt_name == "json":
        return json.dumps(cfg, indent=2)
    if fmt_name != "yaml":
        raise PackerError(f"unknown config format {fmt_name!r}; choose yaml or json")
    ps = report.packer_settings
    lines = [f"# Hugging Face TrainingArguments for the packing run: {ps['num_gpus']} GPU(s) x "
             f"{cfg['per_device_train_batch_size']} pack(s) x {cfg['gradient_accumulation_steps']} accumulation = "
             f"{ps['effective_batch_size']:,} packs per optimizer step ({report.packing['packs']:,} packs of "
             f"{ps['max_length']:,} tokens, '{ps['strategy']}' strategy)"]
    given = dict(report.setup.step_settings)
    for key, value in cfg.items():
        if key in given:
            lines.append(f"{key}: {value}  # padding run: {given[key]:,} x {report.step_ratio:.4f}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def render_packer_settings(report) -> str:
    """The packing run's packer side: the ``packer pack`` command and the ``PackSampler`` call (shell text)."""
    ps = report.packer_settings
    s = ps["sampler"]
    flags = f"--max-length {ps['max_length']} --strategy {ps['strategy']} --overflow {ps['overflow']}"
    if ps["seed"]:
        flags += f" --seed {ps['seed']}"
    if "filler" in ps:
        flags += f" --filler {ps['filler']:g}"
    return "\n".join([
        f"packer pack INPUT --output PACKED {flags}",
        f"# train on {ps['num_gpus']} GPU(s) (torchrun --nproc-per-node {ps['num_gpus']}) with",
        f"#   PackSampler(PackedDataset('PACKED'), batch_size={s['batch_size']}, grad_accum={s['grad_accum']}, "
        f"seed={s['seed']})",
        f"#   and a DataLoader with batch_size={s['batch_size']}: effective batch {ps['effective_batch_size']:,} packs",
    ])


def _intro(report) -> list[str]:
    src, pack = report.source, report.packing
    where = src.get("path", "lengths")
    lines = [f"Computed by `packer report` from {src['kind']} input `{where}`: {src['rows']:,} rows, "
             f"{src['tokens']:,} tokens; capacity {src['capacity']:,}, strategy `{src['strategy']}`, "
             f"overflow `{src['overflow']}`."]
    if report.setup.padding_full_rows:
        lines.append("The padding column pads every row whole (`--padding-full-rows`), as the reference's padding "
                     "run did; the packing column trains the rows after the overflow policy.")
        if not src.get("lengths_exact", True):
            lines.append(
                f"The lengths of the {pack['sequences_dropped'] + pack['sequences_truncated']:,} over-capacity rows "
                "are not in the packs; they are spread from the manifest's totals (the padding figures are close, "
                "not exact).")
    else:
        lines.append(f"Both columns train the same sequences: the padding run uses the same max length "
                     f"({src['capacity']:,}) and overflow policy (`{src['overflow']}`) as the packs.")
    lines.append(f"Packing steps are PackSampler's: {report.setup.num_gpus} GPU(s), no batch across an epoch "
                 "boundary, the packs that do not divide among the GPUs left out of each epoch.")
    if src["kind"] != "packed":
        lines.append("Data loss counts what the overflow policy drops or cuts; sequences left with no trained token "
                     "(a prompt cut before its answer) are known once packed: `packer pack` counts them, and a "
                     "report of the packed folder includes them.")
    return lines


def _table(report) -> list[str]:
    pad, pack, notes = report.padding, report.packing, report.notes
    lines = ["| Parameter | Padding Mode | Packing Mode | Notes |",
             "|-----------|--------------|--------------|-------|"]
    for section, names in ROW_ORDER:
        lines.append(f"| **{section}** | | | |")
        for name in names:
            label = ROW_LABELS.get(name, name)
            lines.append(f"| {label} | {_cell('padding', name, pad)} | {_cell('packing', name, pack)} "
                         f"| {notes[name]} |")
    return lines


def _takeaways(report) -> list[str]:
    pad, pack = report.padding, report.packing
    speed = pack["relative_training_speed"]
    steps_x = pad["loop_total_optimizer_steps"] / pack["total_optimizer_steps"]
    seen = _cell("packing", "total_samples_seen", pack)
    return [
        f"1. **Efficiency**: packing cuts the padding from {pad['padding_overhead']:.1%} (measured, micro-batches "
        f"of {report.setup.padding_batch_size}) to {_share(pack['padding_overhead'])} of the processed tokens",
        f"2. **Speed**: {speed:.2f}× the padding run's throughput under the {report.cost_model['name']} cost model "
        f"({abs(speed - 1):.0%} {'faster' if speed >= 1 else 'slower'}); the whole run takes "
        f"{pack['relative_run_time']:.2f}× the padding run's time",
        f"3. **Dynamics**: a different notion of \"step\": packing processes {pack['samples_per_pack']:.1f}× more "
        f"samples per optimizer step ({pack['samples_per_step']:,.0f} vs {pad['samples_per_step']:,})",
        f"4. **Equivalence**: {seen} vs {pad['total_samples_seen']:,} sequences seen over "
        f"{_epochs_text(pad['num_train_epochs'])} epoch{'' if pad['num_train_epochs'] == 1 else 's'} "
        f"({pack['data_loss']:.2%} of the rows lost to the "
        f"overflow policy), in {steps_x:.1f}× fewer optimizer steps "
        f"({pack['total_optimizer_steps']:,} vs {pad['loop_total_optimizer_steps']:,} as an epoch loop counts them)",
        f"5. **Memory**: a packing micro-batch holds {pack['peak_micro_batch_slots']:,} token slots every step; "
        f"padding micro-batches vary up to {pad['peak_micro_batch_slots']:,}",
    ]


def _cost(report) -> list[str]:
    pad, pack = report.padding, report.packing
    lines = [f"**{report.cost_model['name']}**: {report.cost_model['description']}"]
    if "model" in report.cost_model:
        m = report.cost_model["model"]
        est = f" (estimated: {', '.join(m['estimated'])})" if m["estimated"] else ""
        lines.append(f"Model: {m['num_params']:,} parameters, {m['num_layers']} layers, hidden size "
                     f"{m['hidden_size']:,}{est}. Attention is {pad['attention_share']:.1%} of the padding run's "
                     f"cost and {pack['attention_share']:.1%} of the packing run's.")
    lines += ["", f"Per epoch: padding {pad['token_slots_per_epoch']:,.0f} token slots for {pad['tokens_per_epoch']:,} "
              f"tokens; packing {pack['token_slots_per_epoch']:,} slots for {pack['tokens_per_epoch']:,} tokens. "
              "Not modelled: waits for the slowest GPU at each optimizer step, kernel efficiency at different "
              "sequence lengths, data loading."]
    return lines


def _recommendation(report, config_format: str) -> list[str]:
    pad, pack = report.padding, report.packing
    speed = pack["relative_training_speed"]
    if report.use_packing:
        head = "**Use packing mode** with"
    elif speed > 1:
        head = (f"**Packing is {speed:.2f}× faster here, but not recommended as configured** (see the warnings "
                "above); if you pack anyway, fix what they say, then use")
    else:
        head = "**Packing is not faster here; if you pack anyway, use**"
    lines = [f"{head} these Hugging Face `TrainingArguments` (optimizer steps {pack['total_optimizer_steps']:,} / "
             f"{pad['loop_total_optimizer_steps']:,} = {report.step_ratio:.4f} of the padding run's, both as an "
             "epoch loop counts them; step-based settings rescaled by that ratio):",
             "", f"```{config_format}", render_config(report, fmt_name=config_format), "```"]
    if report.other_step_settings:
        given = dict(report.setup.step_settings)
        lines += ["", "Your other step settings (not `TrainingArguments` fields), rescaled:", "", "```yaml"]
        lines += [f"{k}: {v}  # padding run: {given[k]:,} x {report.step_ratio:.4f}"
                  for k, v in report.other_step_settings.items()]
        lines.append("```")
    lines += ["", "and these packer settings:", "", "```sh", render_packer_settings(report), "```"]
    if not report.setup.step_settings:
        lines += ["", f"Scale `eval_steps`, `save_steps`, `warmup_steps` and other step-based settings by "
                      f"{report.step_ratio:.4f} (or pass them with --eval-steps/--save-steps/--warmup-steps/"
                      "--step-setting NAME=STEPS and the report does it)."]
    return lines


def render_markdown(report, *, config_format: str = "yaml") -> str:
    """The report as Markdown: the reference's sections and rows, both columns computed, warnings first."""
    lines = ["# Padding vs Packing: Configuration Comparison", "", *_intro(report), ""]
    if report.warnings:
        lines += ["## Warnings", ""]
        lines += [f"- **{w.code}**: {w.message}" for w in report.warnings]
        lines.append("")
    lines += ["## Training Configuration Comparison", "", *_table(report), "",
              "## Key Takeaways", "", *_takeaways(report), "",
              "## Cost Model", "", *_cost(report), "",
              "## Recommendation", "", *_recommendation(report, config_format)]
    return "\n".join(lines) + "\n"


def render_json(report) -> str:
    """The report as JSON (:meth:`packer.report.Report.to_dict`)."""
    return json.dumps(report.to_dict(), indent=2)
