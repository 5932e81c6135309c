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


def _stretch_bounds(taggram: Taggram) -> np.ndarray:
    """Each window's scores are drawn over the stretch nearest its centre (as Taggram.segments):
    [W + 1] bounds in seconds."""
    c = taggram.centres
    return np.r_[0.0, (c[:-1] + c[1:]) / 2, taggram.duration]


def active_segments(taggram: Taggram) -> np.ndarray:
    """The lines marking where a tag is on: [n, 2, 2], one (x, y) pair of ends per active
    (window, tag), across the window's stretch, through the middle of the tag's row."""
    bounds = _stretch_bounds(taggram)
    window, tag = np.nonzero(taggram.active)
    row = tag + 0.5
    return np.stack([np.stack([bounds[window], row], 1), np.stack([bounds[window + 1], row], 1)], 1)


def plot_taggram(taggram: Taggram, path) -> None:
    """The picture as a PNG, to a path or a binary file."""
    plt = _pyplot()
    from matplotlib.collections import LineCollection
    n_tags = len(taggram.tags)
    fig, (ax, wave) = plt.subplots(2, 1, figsize=(12, 2.0 + 0.28 * n_tags), sharex=True,
                                   gridspec_kw={"height_ratios": [max(n_tags, 4) * 0.28, 1.2]})
    bounds = _stretch_bounds(taggram)
    mesh = ax.pcolormesh(bounds, np.arange(n_tags + 1), taggram.scores.T, cmap="magma", vmin=0, vmax=1,
                         shading="flat")
    # One collection, not a line per active cell (that took seconds for a long file).
    ax.add_collection(LineCollection(active_segments(taggram), colors="#2dd4bf", linewidths=1.5))
    ax.set_yticks(np.arange(n_tags) + 0.5)
    ax.set_yticklabels([short_tag(t) for t in taggram.tags], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{os.path.basename(taggram.source)}  ({taggram.model}; line = tag on)", fontsize=9, loc="left")
    fig.colorbar(mesh, ax=[ax, wave], fraction=0.02, pad=0.01, label="score")
    if taggram.envelope is not None and len(taggram.envelope):
        t = np.linspace(0, taggram.duration, len(taggram.envelope))
        wave.fill_between(t, taggram.envelope[:, 0], taggram.envelope[:, 1], color="#475569", lw=0)
    wave.set_xlim(0, taggram.duration)
    wave.set_xlabel("time (s)")
    wave.set_yticks([])
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
