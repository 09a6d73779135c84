"""The report's picture: what each mode processes, how many optimizer steps it takes, and the lengths.

Three panels:

1. **Token slots per epoch** for padding and packing, each bar split into real tokens and padding, and a third bar
   for the tokens the overflow policy lost (trained by neither mode; by the padding mode only with
   ``padding_full_rows``).
2. **Optimizer steps** of each run, as an epoch loop counts them (packing: ``PackSampler``).
3. **Sequence lengths** of the input rows (log-spaced bins from the shortest row to the longest), the capacity
   marked and the rows over it coloured by what the overflow policy does with them.

Counts get integer ticks; axes start where the data does. matplotlib is an optional extra
(``pip install 'packer-llm[plot]'``), imported only when a plot is drawn, on an explicit Agg canvas
(``matplotlib.backends.backend_agg``), never through ``pyplot``: no global backend switch, no display needed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from packer.errors import PackerError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'packer-llm[plot]'  (or: pip install matplotlib)"
_REAL, _PAD, _LOST, _OVER = "#4c72b0", "#dd8452", "#c44e52", "#8c8c8c"


def require_matplotlib() -> None:
    """Raise a :class:`PackerError` saying how to install matplotlib if it is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PackerError(f"--plot needs matplotlib, which is not installed; install it with: {INSTALL_HINT}") \
            from None


def check_plot_path(path: str | os.PathLike) -> Path:
    """Check, before any work, that a PNG can be written at ``path``; return it as a Path.

    Raises:
        PackerError: the folder is missing or not writable, or ``path`` is a folder.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise PackerError(f"--plot {path}: is a folder; give a file name, e.g. --plot {p / 'report.png'}")
    if not folder.is_dir():
        raise PackerError(f"--plot {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PackerError(f"--plot {path}: cannot write there (permission denied); choose another path")
    return p


def _millions(ax, axis) -> None:
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos):
        return f"{v / 1e6:,.1f}M" if abs(v) >= 1e6 else f"{v / 1e3:,.0f}k" if abs(v) >= 1e3 else f"{v:,.0f}"

    getattr(ax, f"{axis}axis").set_major_formatter(FuncFormatter(fmt))


def _slots_panel(ax, report) -> None:
    pad, pack = report.padding, report.packing
    names = ["padding", "packing"]
    real = np.array([pad["tokens_per_epoch"], pack["tokens_per_epoch"]], dtype=np.float64)
    padding = np.array([pad["token_slots_per_epoch"], pack["token_slots_per_epoch"]], dtype=np.float64) - real
    ax.bar(names, real, width=0.6, color=_REAL, label="real tokens")
    ax.bar(names, padding, width=0.6, bottom=real, color=_PAD, label="padding")
    for i in range(2):
        ax.annotate(f"{padding[i] / (real[i] + padding[i]):.1%} padding", (i, real[i] + padding[i]), ha="center",
                    va="bottom", xytext=(0, 3), textcoords="offset points")
    lost = pack["tokens_lost"]
    if lost:
        who = "packing" if report.setup.padding_full_rows else "either mode"
        ax.bar([f"lost to --overflow\n{report.source['overflow']}"], [lost], width=0.6, color="white",
               edgecolor=_LOST, hatch="//", label=f"tokens not trained by {who}")
        ax.annotate(f"{lost:,} tokens", (2, lost), ha="center", va="bottom", xytext=(0, 3),
                    textcoords="offset points")
    ax.set_ylim(0, float((real + padding).max()) * 1.3)
    _millions(ax, "y")
    ax.set_ylabel("token slots per epoch")
    ax.set_title("token slots processed per epoch")
    ax.legend(loc="upper right", fontsize="small")


def _steps_panel(ax, report) -> None:
    from matplotlib.ticker import MaxNLocator

    pad, pack = report.padding, report.packing
    steps = [pad["loop_total_optimizer_steps"], pack["total_optimizer_steps"]]
    per_epoch = [pad["loop_steps_per_epoch"], pack["steps_per_epoch"]]
    bars = ax.bar(["padding", "packing"], steps, color=[_PAD, _REAL])
    for bar, total, spe in zip(bars, steps, per_epoch):
        ax.annotate(f"{total:,} ({spe:,} per epoch)", (bar.get_x() + bar.get_width() / 2, total), ha="center",
                    va="bottom", xytext=(0, 3), textcoords="offset points")
    ax.set_ylim(0, max(steps) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("optimizer steps")
    epochs = report.setup.epochs
    ax.set_title(f"optimizer steps over {epochs:g} epoch{'' if epochs == 1 else 's'}, "
                 f"effective batch {report.setup.effective_batch_size:,}")


def _lengths_panel(ax, report) -> None:
    from matplotlib.ticker import MaxNLocator

    d = report.distributions
    lengths = d.lengths[d.lengths > 0]
    lo, hi = int(lengths.min()), int(lengths.max())
    bins = np.geomspace(lo, max(hi, lo + 1), 50) if hi > lo else np.array([lo - 0.5, lo + 0.5])
    over = lengths > d.capacity
    counts, _, _ = ax.hist([lengths[~over], lengths[over]], bins=bins, stacked=True, color=[_REAL, _OVER],
            label=[f"fit ({int((~over).sum()):,} rows)",
                   f"over the capacity, {report.source['overflow']} ({int(over.sum()):,} rows)"])
    if hi > lo:
        ax.set_xscale("log")
    ax.set_xlim(bins[0], bins[-1] if hi > d.capacity else max(bins[-1], d.capacity * 1.05))
    ax.axvline(d.capacity, color=_LOST, linestyle="--", label=f"capacity {d.capacity:,}")
    ax.set_ylim(0, float(np.max(counts[-1])) * 1.35)  # headroom for the legend
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"input lengths ({lengths.shape[0]:,} rows, {lo:,} to {hi:,} tokens)")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend(loc="upper left", fontsize="small")


def report_figure(report):
    """The three panels of a :class:`packer.report.Report` as a matplotlib ``Figure`` on an Agg canvas.

    Axes, left to right: token slots per epoch, optimizer steps, input lengths (module docstring).

    Raises:
        PackerError: matplotlib is missing.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1, 1, 1.4])
    _slots_panel(ax1, report)
    _steps_panel(ax2, report)
    _lengths_panel(ax3, report)
    speed = report.packing["relative_training_speed"]
    verdict = "packing recommended" if report.use_packing else "packing not recommended as configured" + (
        f" (warnings: {', '.join(w.code for w in report.warnings)})" if report.warnings else "")
    fig.suptitle(f"padding vs packing: packing is {speed:.2f}x the padding throughput "
                 f"({report.cost_model['name']} cost model)\n{verdict}")
    return fig


def plot_report(report, path: str | os.PathLike, *, dpi: int = 110) -> str:
    """Draw :func:`report_figure` into a PNG file and return its path.

    Raises:
        PackerError: matplotlib is missing, or the file cannot be written (checked before drawing).
    """
    require_matplotlib()
    check_plot_path(path)
    fig = report_figure(report)
    try:
        fig.savefig(os.fspath(path), dpi=dpi, format="png")
    except OSError as e:
        raise PackerError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    log.info("wrote %s", path)
    return os.fspath(path)
