"""The padding-vs-packing report: the user's configuration comparison, computed from the data and the plan.

A comparison written by hand (the reference run: 4 GPUs, effective batch 128, 4 epochs) weighs a padded and a
packed training run with estimates (``~40-50%`` padding, ``~1.3-1.5x`` faster). This package computes every row of
that table from the sequence lengths and the actual packing plan, for the run the user will get:

* **Same data on both sides.** The padding run trains the same sequences as the packs hold: the same max length
  and overflow policy (``drop`` leaves the long rows out of both, ``truncate`` cuts them in both, ``split`` turns
  them into the same pieces). ``TrainingSetup(padding_full_rows=True)`` pads every row whole instead, as the
  reference's padding run did (its figures are reproduced that way), and the report warns that the columns then
  compare different data.
* **Padding mode** is simulated: the rows are shuffled (seeded) and cut into micro-batches of the per-device batch
  size, each padded to its longest sequence (dynamic padding, as ``DataCollatorWithPadding`` does). One shuffle per
  epoch (``ceil(epochs)`` of them); the figures are per-epoch means.
* **Packing mode** comes from the plan (packs of ``capacity`` tokens, each padded to the capacity when the torch
  layer reads it), trained as ``PackSampler`` trains it. Its schedule comes from :mod:`packer.schedule`, the
  function ``PackSampler`` itself uses: every GPU gets ``packs // num_gpus`` packs per epoch (the ``packs %
  num_gpus`` others are left out, different ones each epoch), no batch runs across an epoch boundary, an epoch is
  ``ceil(packs_per_gpu / (per_device_batch x accumulation))`` optimizer steps, the run ``ceil(epochs x that)``
  (``Trainer``'s ``max_steps``). The sequences seen are counted from the packs each epoch keeps under the
  sampler's seeded shuffle (exact for whole epochs).
* **Padding steps** keep the reference's count, ``rows / effective_batch`` per epoch (776.5 for the reference run)
  and ``ceil(rows x epochs / effective_batch)`` in all (3,106); ``loop_steps_per_epoch`` and
  ``loop_total_optimizer_steps`` give what an epoch loop makes of it (``DistributedSampler`` + ``Trainer``: 777
  and 3,108). The step ratio that rescales step settings compares the two loops.
* **Warnings** (:class:`ReportWarning`) name what makes the comparison or the advice doubtful: less than one
  optimizer step per epoch, fewer than :data:`MIN_STEPS_PER_EPOCH` steps per epoch, rows, tokens or packs lost
  above ``loss_warning``, different data in the two columns, step settings floored to 1. The report recommends
  packing (``use_packing``) only when it is faster and nothing is doubtful.
* **Relative training speed** follows a stated cost model (:data:`COST_MODELS`): tokens processed, padding
  included; or, given the model's shape, training FLOPs with the attention term (``sum(L**2)`` over the segments of
  a pack with varlen attention; ``batch * longest**2`` for a padded micro-batch).

Everything returned is plain data: :class:`Report` (a frozen dataclass) and its :meth:`Report.to_dict`;
:mod:`packer.report.render` turns it into Markdown, JSON and the configuration blocks.

Modules, each importing only those above it (``render`` reads the comparison only):

* :mod:`packer.report.training`: :class:`TrainingSetup`, :class:`ModelShape`, :func:`parse_count`, the reference
  run's constants and the cost models.
* :mod:`packer.report.padding`: :func:`simulate_padding`, the padding-mode micro-batches.
* :mod:`packer.report.comparison`: :class:`Report`, its columns, warnings and notes (``build_report``).
* :mod:`packer.report.sources`: :func:`report_from_lengths`, :func:`report_from_packed`,
  :func:`report_from_input`, :func:`recover_lengths`.
* :mod:`packer.report.render`: Markdown, JSON and the configuration blocks.

A new row of the table takes four places: its value in ``comparison._padding_column`` and ``_packing_column``, its
Notes cell in ``comparison._notes``, and its name and label in ``render.ROW_ORDER`` and ``render.ROW_LABELS``.

Example:
    >>> import numpy as np
    >>> from packer.report import TrainingSetup, report_from_lengths
    >>> r = report_from_lengths(np.array([4] * 12), capacity=16,
    ...                         setup=TrainingSetup(num_gpus=1, effective_batch_size=4, epochs=1))
    >>> r.padding["gradient_accumulation_steps"], r.packing["gradient_accumulation_steps"]
    (2, 4)
    >>> r.packing["packs"], r.packing["packing_efficiency"], r.packing["samples_per_pack"]
    (3, 1.0, 4.0)
    >>> r.padding["total_optimizer_steps"], r.packing["total_optimizer_steps"]   # ceil(12 / 4), ceil(3 / 4)
    (3, 1)
    >>> [w.code for w in r.warnings]
    ['under_one_step_per_epoch', 'few_steps_per_epoch']
"""
from __future__ import annotations

from packer.report.training import (
    ASPECT_RATIO,
    COST_MODELS,
    DATA_LOSS_WARNING,
    REFERENCE_EFFECTIVE_BATCH,
    REFERENCE_EPOCHS,
    REFERENCE_NUM_GPUS,
    REFERENCE_PACKING_BATCH,
    REFERENCE_PADDING_BATCH,
    ModelShape,
    TrainingSetup,
    parse_count,
)
from packer.report.padding import PaddingSimulation, simulate_padding
from packer.report.comparison import (
    MIN_STEPS_PER_EPOCH,
    OPTIONAL_STATS,
    ROUNDING,
    TRAINING_ARGUMENTS_STEP_FIELDS,
    WARNING_CODES,
    Distributions,
    Report,
    ReportWarning,
)
from packer.report.sources import (
    is_packed_folder,
    recover_lengths,
    report_from_input,
    report_from_lengths,
    report_from_packed,
)
from packer.report.render import (
    ROW_LABELS,
    ROW_ORDER,
    render_config,
    render_json,
    render_markdown,
    render_packer_settings,
)

__all__ = [
    "ASPECT_RATIO", "COST_MODELS", "DATA_LOSS_WARNING", "MIN_STEPS_PER_EPOCH", "OPTIONAL_STATS",
    "REFERENCE_EFFECTIVE_BATCH", "REFERENCE_EPOCHS", "REFERENCE_NUM_GPUS", "REFERENCE_PACKING_BATCH",
    "REFERENCE_PADDING_BATCH", "ROUNDING", "ROW_LABELS", "ROW_ORDER", "TRAINING_ARGUMENTS_STEP_FIELDS",
    "WARNING_CODES", "Distributions", "ModelShape", "PaddingSimulation", "Report", "ReportWarning", "TrainingSetup",
    "is_packed_folder", "parse_count", "recover_lengths", "render_config", "render_json", "render_markdown",
    "render_packer_settings", "report_from_input", "report_from_lengths", "report_from_packed", "simulate_padding",
]
