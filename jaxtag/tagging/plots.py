"""The taggram picture: tag scores over time (a heat map, a line where a tag is on) above the waveform."""
from __future__ import annotations

import os

import numpy as np

from jaxtag.data.tags import short_tag
from jaxtag.tagging.taggram import Taggram


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def active_segments(taggram: Taggram) -> np.ndarray:
    """The lines marking where a tag is on: [n, 2, 2], one (x, y) pair of ends per active
    (window, tag), across the window's stretch, through the middle of the tag's row."""
    bounds = taggram.bounds()
    window, tag = np.nonzero(taggram.active)
    row = tag + 0.5
    return np.stack([np.stack([bounds[window], row], 1), np.stack([bounds[window + 1], row], 1)], 1)


def plot_taggram(taggram: Taggram, path) -> None:
    """The picture as a PNG, to a path or a binary file."""
    fig = taggram_figure(taggram)
    fig.savefig(path, dpi=110, format="png")
    _pyplot().close(fig)


def taggram_figure(taggram: Taggram):
    """The picture as a matplotlib figure (its layout fixed, not fitted at drawing time)."""
    plt = _pyplot()
    from matplotlib.collections import LineCollection
    from matplotlib.font_manager import FontProperties
    n_tags = len(taggram.tags)
    labels = [short_tag(t) for t in taggram.tags]
    width, height = 12.0, 2.0 + 0.28 * n_tags
    fig, (ax, wave) = plt.subplots(2, 1, figsize=(width, height), sharex=True, dpi=110,
                                   gridspec_kw={"height_ratios": [max(n_tags, 4) * 0.28, 1.2]})
    # Margins from the labels' measured widths, in inches, so the picture is drawn once (a
    # "tight" bounding box draws it twice: most of a 4-minute file's writing time).
    renderer = fig.canvas.get_renderer()
    label_font = FontProperties(size=8)
    label_inches = max((renderer.get_text_width_height_descent(label, label_font, ismath=False)[0]
                        for label in labels), default=0.0) / fig.dpi
    fig.subplots_adjust(left=(label_inches + 0.15) / width, right=1 - 0.75 / width,
                        top=1 - 0.3 / height, bottom=0.5 / height, hspace=0.3 / (height - 0.8))
    bounds = taggram.bounds()
    mesh = ax.pcolormesh(bounds, np.arange(n_tags + 1), taggram.scores.T, cmap="magma", vmin=0, vmax=1,
                         shading="flat")
    # One collection, not a line per active cell (that took seconds for a long file).
    ax.add_collection(LineCollection(active_segments(taggram), colors="#2dd4bf", linewidths=1.5))
    ax.set_yticks(np.arange(n_tags) + 0.5)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{os.path.basename(taggram.source)}  ({taggram.model}; line = tag on)", fontsize=9, loc="left",
                 y=1.0, pad=4)  # placed, not fitted above the axes at each draw
    fig.colorbar(mesh, ax=[ax, wave], fraction=0.02, pad=0.01, label="score")
    if taggram.envelope is not None and len(taggram.envelope):
        t = np.linspace(0, taggram.duration, len(taggram.envelope))
        wave.fill_between(t, taggram.envelope[:, 0], taggram.envelope[:, 1], color="#475569", lw=0)
    wave.set_xlim(0, taggram.duration)
    wave.set_xlabel("time (s)")
    wave.set_yticks([])
    return fig
