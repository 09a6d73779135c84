"""The report's picture: length histogram with the capacity marked, pack fill, sequences per pack.

matplotlib is an optional extra (``pip install 'packer-llm[plot]'``) and is imported only when a plot is drawn. The
figure is drawn on an explicit Agg canvas (``matplotlib.backends.backend_agg``), never through ``pyplot``: no
global backend switch, no display needed, nothing left open.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from packer.errors import PackerError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'packer-llm[plot]'  (or: pip install matplotlib)"


def require_matplotlib() -> None:
    """Raise a :class:`PackerError` saying how to install matplotlib if it is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PackerError(f"--plot needs matplotlib, which is not installed; install it with: {INSTALL_HINT}") \
            from None


def plot_report(report, path: str | os.PathLike, *, dpi: int = 110) -> str:
    """Draw the three panels of a :class:`packer.report.Report` into a PNG file and return its path.

    Panels: (1) input lengths, log-spaced bins, with the capacity and the longest row marked; (2) pack fill
    (tokens / capacity, %); (3) sequences per pack.

    Raises:
        PackerError: matplotlib is missing, or the file cannot be written.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = report.distributions
    lengths = d.lengths[d.lengths > 0]
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)

    hi = max(int(lengths.max()), d.capacity)
    bins = np.geomspace(1, hi * 1.05, 60)
    ax1.hist(lengths, bins=bins, color="#4c72b0")
    ax1.set_xscale("log")
    ax1.axvline(d.capacity, color="#c44e52", linestyle="--", label=f"capacity {d.capacity:,}")
    ax1.axvline(int(lengths.max()), color="#555555", linestyle=":", label=f"longest {int(lengths.max()):,}")
    over = int(np.count_nonzero(lengths > d.capacity))
    ax1.set_title(f"sequence lengths ({lengths.shape[0]:,} rows; {over:,} over the capacity)")
    ax1.set_xlabel("tokens")
    ax1.set_ylabel("rows")
    ax1.legend(loc="upper left")

    fill = 100.0 * d.pack_tokens / d.capacity
    # log counts: on reference-like data all but one or two packs are >99.9% full, and a linear axis hides the
    # few part-filled ones that are the whole story of the lost efficiency
    ax2.hist(fill, bins=np.linspace(min(float(fill.min()), 90.0), 100.0, 41), color="#55a868")
    ax2.set_yscale("log")
    ax2.set_title(f"pack fill ({d.pack_tokens.shape[0]:,} packs; efficiency "
                  f"{report.packing['packing_efficiency']:.2%})")
    ax2.set_xlabel(f"tokens / capacity (%); emptiest pack {fill.min():.1f}%, median {np.median(fill):.2f}%")
    ax2.set_ylabel("packs (log)")

    seqs = d.pack_sequences
    edges = np.arange(int(seqs.min()), int(seqs.max()) + 2) - 0.5
    ax3.hist(seqs, bins=edges, color="#8172b2")
    ax3.axvline(float(seqs.mean()), color="#c44e52", linestyle="--", label=f"mean {seqs.mean():.2f}")
    ax3.set_title("sequences per pack")
    ax3.set_xlabel("sequences")
    ax3.set_ylabel("packs")
    ax3.legend(loc="upper right")

    try:
        fig.savefig(os.fspath(path), dpi=dpi, format="png")
    except OSError as e:
        raise PackerError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    log.info("wrote %s", path)
    return os.fspath(path)
