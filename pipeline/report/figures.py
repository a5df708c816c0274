"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DPI = 100
SCI = FuncFormatter(lambda v, _: f"{v:.1e}" if v else "0")  # tick labels that need no offset text
GRID_COLUMNS = 4  # samples per row of an image grid; each sample takes two panels (image, dE/dx map)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _display_image(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One flat sample as an (h, w) or (h, w, 3) array for imshow."""
    image = np.asarray(x, np.float64).reshape(shape)
    if shape[-1] == 1:
        return image[..., 0]
    image = image[..., :3] if shape[-1] >= 3 else image.mean(axis=-1)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def sample_grid(
    images: np.ndarray,
    grads: np.ndarray,
    shape: tuple[int, ...],
    titles: Sequence[str],
    image_range: tuple[float, float],
    grad_limit: float,
) -> bytes:
    """Each sample as its image (gray for one channel, else colour) and, to its right, its dE/dx map (RdBu_r, centred at 0).

    images, grads: [n, d] flat. grad_limit: the symmetric colour limit shared by every map of the grid,
    so maps can be compared; channels of the gradient are summed (the response to brightening a pixel).
    """
    n = len(images)
    rows = max(1, -(-n // GRID_COLUMNS))
    fig = Figure(figsize=(2.75 * GRID_COLUMNS + 1.0, 1.95 * rows + 0.1), dpi=DPI)
    outer = fig.add_gridspec(rows, GRID_COLUMNS + 1, width_ratios=[1] * GRID_COLUMNS + [0.06],
                             wspace=0.18, hspace=0.45, left=0.01, right=0.93, top=1 - 0.5 / (1.95 * rows + 0.1), bottom=0.02)
    limit = grad_limit if grad_limit > 0 else 1.0
    mappable = None
    for k in range(n):
        r, c = divmod(k, GRID_COLUMNS)
        inner = outer[r, c].subgridspec(1, 2, wspace=0.06)
        ax_img, ax_grad = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        ax_img.imshow(_display_image(images[k], shape), cmap="gray", vmin=image_range[0], vmax=image_range[1],
                      interpolation="nearest")
        grad_map = np.asarray(grads[k], np.float64).reshape(shape).sum(axis=-1)
        mappable = ax_grad.imshow(grad_map, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax_img.set_title(titles[k], fontsize=9, loc="left", pad=3)
        ax_grad.set_title("dE/dx", fontsize=8, loc="right", pad=3, color="#555555")
        for ax in (ax_img, ax_grad):
            ax.set_xticks([])
            ax.set_yticks([])
    if mappable is not None:
        bar = fig.colorbar(mappable, cax=fig.add_subplot(outer[:, -1]), format=SCI)
        bar.set_label("dE/dx  (red: brighter pixel raises val. error)", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return _png(fig)


def histogram(values: np.ndarray, harmful_threshold: float | None) -> bytes:
    """Histogram of influence_mean with 0 and the top-10%-harmful threshold marked (log counts from 200 samples)."""
    fig = Figure(figsize=(7.5, 3.2), dpi=DPI)
    ax = fig.add_subplot()
    ax.hist(values, bins=min(80, max(10, len(values) // 10)), color="#4c72b0", edgecolor="white", linewidth=0.3)
    log = len(values) >= 200  # long tails: a log count axis shows the few extreme samples
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.axvline(0, color="black", linewidth=1, label="0 (no effect)")
    if harmful_threshold is not None:
        ax.axvline(harmful_threshold, color="#c0392b", linestyle="--", linewidth=1.2,
                   label=f"10% most harmful: influence >= {harmful_threshold:.2e}")
    ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_xlabel("influence_mean   (left of 0: helpful, right of 0: harmful)")
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
    ax.set_xlabel("predicted change of E  (-influence)")
    ax.set_ylabel("actual change of E  (retrained)")
    ax.xaxis.set_major_formatter(SCI)
    ax.yaxis.set_major_formatter(SCI)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def relative_errors(kinds: np.ndarray, errors: np.ndarray) -> bytes:
    """Gradcheck relative errors per kind on a log axis (errors of exactly 0 are drawn at 1e-16)."""
    names = sorted(set(kinds.tolist()))
    fig = Figure(figsize=(4.8, 3.0), dpi=DPI)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for pos, kind in enumerate(names):
        values = np.maximum(errors[kinds == kind], 1e-16)
        ax.scatter(pos + rng.uniform(-0.12, 0.12, values.size), values, s=22, alpha=0.8)
        ax.hlines(np.median(values), pos - 0.25, pos + 0.25, color="black", linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [f"dE/d{name}" for name in names])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("relative error (log)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)
