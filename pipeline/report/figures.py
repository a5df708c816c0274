"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

DPI = 100
SCI = FuncFormatter(lambda v, _: f"{v:.1e}" if v else "0")  # tick labels that need no offset text
GRID_COLUMNS = 4  # samples per row of an image grid; each sample takes two panels (image, dE/dx map)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def is_image(shape: Sequence[int]) -> bool:
    """True for one sample's shape that can be drawn as a picture: (h, w) or (h, w, c) with c in (1, 3), h, w >= 4."""
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        return False
    return shape[0] >= 4 and shape[1] >= 4


def channel_sum(grads: np.ndarray) -> np.ndarray:
    """[n, h, w] maps from [n, h, w] or [n, h, w, c] gradients:
    channels summed (the response to brightening a pixel)."""
    grads = np.asarray(grads, np.float64)
    return grads.sum(axis=-1) if grads.ndim == 4 else grads


def _display_image(image: np.ndarray) -> np.ndarray:
    """One sample, (h, w), (h, w, 1) or (h, w, 3), as an (h, w) gray or (h, w, 3) colour array for imshow."""
    image = np.asarray(image, np.float64)
    if image.ndim == 2 or image.shape[-1] == 1:
        return image.reshape(image.shape[:2])
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def sample_grid(
    images: np.ndarray,
    grads: np.ndarray,
    titles: Sequence[str],
    image_range: tuple[float, float],
    grad_limit: float,
    grad_name: str,
    colorbar_label: str,
) -> bytes:
    """Each sample as its image (gray for one channel, else colour) and, to its right,
    its gradient map (RdBu_r, centred at 0).

    images, grads: [n, h, w] or [n, h, w, c] (see is_image). grad_limit: the symmetric colour limit shared by every
    map of the grid, so maps can be compared; channels of the gradient are summed (see channel_sum).
    grad_name titles each map (e.g. "dE/dx"); colorbar_label says what the colours mean.
    """
    n = len(images)
    rows = max(1, -(-n // GRID_COLUMNS))
    fig = Figure(figsize=(2.75 * GRID_COLUMNS + 1.0, 1.95 * rows + 0.1), dpi=DPI)
    outer = fig.add_gridspec(
        rows,
        GRID_COLUMNS + 1,
        width_ratios=[1] * GRID_COLUMNS + [0.06],
        wspace=0.18,
        hspace=0.45,
        left=0.01,
        right=0.93,
        top=1 - 0.5 / (1.95 * rows + 0.1),
        bottom=0.02,
    )
    limit = grad_limit if grad_limit > 0 else 1.0
    maps = channel_sum(grads)
    mappable = None
    for k in range(n):
        r, c = divmod(k, GRID_COLUMNS)
        inner = outer[r, c].subgridspec(1, 2, wspace=0.06)
        ax_img, ax_grad = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        ax_img.imshow(
            _display_image(images[k]), cmap="gray", vmin=image_range[0], vmax=image_range[1], interpolation="nearest"
        )
        mappable = ax_grad.imshow(maps[k], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax_img.set_title(titles[k], fontsize=9, loc="left", pad=3)
        ax_grad.set_title(grad_name, fontsize=8, loc="right", pad=3, color="#555555")
        for ax in (ax_img, ax_grad):
            ax.set_xticks([])
            ax.set_yticks([])
    if mappable is not None:
        bar = fig.colorbar(mappable, cax=fig.add_subplot(outer[:, -1]), format=SCI)
        bar.set_label(colorbar_label, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return _png(fig)


def query_samples(
    query: np.ndarray | None,
    query_title: str,
    rows: Sequence[tuple[str, str, np.ndarray, Sequence[str]]],
    image_range: tuple[float, float],
) -> bytes:
    """A query's image on the left (spanning every row; None: no query image) and one row of training images
    per entry of rows: (label written along the row's left edge, its colour, images [n, h, w(, c)], n titles).

    Images as in sample_grid: gray on the shared image_range for one channel, else colour stretched per image.
    """
    n = max(1, max(len(images) for _, _, images, _ in rows))
    lead = [1.3, 0.25] if query is not None else []  # the query's column and a gap after it
    height = 1.75 * len(rows) + 0.15
    fig = Figure(figsize=(1.55 * (n + sum(lead)) + 0.4, height), dpi=DPI)
    grid = fig.add_gridspec(
        len(rows),
        len(lead) + n,
        width_ratios=lead + [1] * n,
        wspace=0.12,
        hspace=0.55,
        left=0.035,
        right=0.995,
        top=1 - 0.42 / height,
        bottom=0.02,
    )

    def draw(ax: Axes, image: np.ndarray, title: str, color: str) -> None:
        ax.imshow(_display_image(image), cmap="gray", vmin=image_range[0], vmax=image_range[1], interpolation="nearest")
        ax.set_title(title, fontsize=8.5, loc="left", pad=3, color=color)
        ax.set_xticks([])
        ax.set_yticks([])

    if query is not None:
        draw(fig.add_subplot(grid[:, 0]), query, query_title, "#222222")
    for r, (label, color, images, titles) in enumerate(rows):
        for k in range(len(images)):
            ax = fig.add_subplot(grid[r, len(lead) + k])
            draw(ax, images[k], titles[k], color)
            if k == 0:
                ax.set_ylabel(label, fontsize=9, color=color)
    return _png(fig)


def histogram(values: np.ndarray, threshold: float | None, threshold_label: str, xlabel: str) -> bytes:
    """Histogram of influence_mean with 0 and `threshold` (where the top 10% start) marked
    (log counts from 200 samples).

    threshold_label names the top 10% in the legend (e.g. "10% most harmful"); xlabel says how to read the x axis.
    """
    fig = Figure(figsize=(7.5, 3.2), dpi=DPI)
    ax = fig.add_subplot()
    ax.hist(values, bins=min(80, max(10, len(values) // 10)), color="#4c72b0", edgecolor="white", linewidth=0.3)
    log = len(values) >= 200  # long tails: a log count axis shows the few extreme samples
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.axvline(0, color="black", linewidth=1, label="0")
    if threshold is not None:
        ax.axvline(
            threshold,
            color="#c0392b",
            linestyle="--",
            linewidth=1.2,
            label=f"{threshold_label}: influence >= {threshold:.2e}",
        )
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1), ncol=2)  # above the bars
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples (log scale)" if log else "samples")
    ax.xaxis.set_major_formatter(SCI)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def loo_scatter(predicted: np.ndarray, actual: np.ndarray, seeds: np.ndarray) -> bytes:
    """Predicted (-influence) vs actual change of E when a sample is left out, with the y = x line."""
    fig = Figure(figsize=(4.8, 4.4), dpi=DPI)
    ax = fig.add_subplot()
    unique = np.unique(seeds)
    for seed in unique:
        mask = seeds == seed
        ax.scatter(predicted[mask], actual[mask], s=22, alpha=0.8, label=f"seed {seed}")
    both = np.concatenate([predicted, actual])
    low, high = float(both.min()), float(both.max())
    pad = 0.05 * (high - low or abs(high) or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="gray", linewidth=1, linestyle="--", label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.xaxis.set_major_locator(MaxNLocator(5))  # scientific tick labels are wide: few of them, so they do not collide
    ax.set_xlabel("predicted change of E  (-influence)")
    ax.set_ylabel("actual change of E  (retrained)")
    ax.xaxis.set_major_formatter(SCI)
    ax.yaxis.set_major_formatter(SCI)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def relative_errors(kinds: np.ndarray, errors: np.ndarray) -> bytes:
    """Gradcheck relative errors per kind (eps, x or x.<name>) on a log axis
    (errors of exactly 0 are drawn at 1e-16)."""
    names = sorted(set(kinds.tolist()))
    fig = Figure(figsize=(4.8, 3.0), dpi=DPI)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for pos, kind in enumerate(names):
        values = np.maximum(errors[kinds == kind], 1e-16)
        ax.scatter(pos + rng.uniform(-0.12, 0.12, values.size), values, s=22, alpha=0.8)
        ax.hlines(np.median(values), pos - 0.25, pos + 0.25, color="black", linewidth=1.5)
    ax.set_yscale("log")
    long = any(len(name) > 6 for name in names)  # per-input kinds (x.<name>): slanted so they do not overlap
    ax.set_xticks(range(len(names)), names, rotation=20 if long else 0, ha="right" if long else "center", fontsize=9)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("relative error (log)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def smoothness_ladder(steps: Sequence[float], medians: dict[str, Sequence[float | None]]) -> bytes:
    """Median relative deviation of the linear prediction vs the step s (log-log), one line per unit kind."""
    fig = Figure(figsize=(5.6, 3.4), dpi=DPI)
    ax = fig.add_subplot()
    for kind, values in medians.items():
        points = [(s, max(v, 1e-6)) for s, v in zip(steps, values) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=kind)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("s: weight moved from 1 to 1 - s (1 = removal)")
    ax.set_ylabel("median relative deviation")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)
