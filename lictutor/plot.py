"""Rate–distortion plots and side-by-side crops, in one style for the whole book.

Curves are results in CompressAI's JSON schema (see :mod:`lictutor.results`):
``{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...]}}``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from lictutor.errors import LictutorError
from lictutor.metrics import bd_rate, msssim_db, rate_difference

__all__ = ["rd_plot", "rd_figure", "rd_panels", "rate_difference_figure", "show_crops", "conditional_histogram", "channel_density",
           "channel_densities", "style_for"]

# Fixed colours and markers, so that a codec looks the same in every chapter.
_STYLES = {
    "jpeg": ("#7f7f7f", "o"),
    "jpeg2000": ("#8c564b", "s"),
    "jpeg 2000": ("#8c564b", "s"),
    "webp": ("#2ca02c", "^"),
    "avif": ("#9467bd", "v"),
    "hevc": ("#ff7f0e", "D"),
    "bpg": ("#ff7f0e", "D"),
    "jpeg xl": ("#17becf", "P"),
    "jxl": ("#17becf", "P"),
    "vtm": ("#000000", "*"),
}
_CYCLE = ["#1f77b4", "#d62728", "#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39"]

METRIC_LABELS = {
    "psnr-rgb": "PSNR (RGB) [dB]",
    "ms-ssim-rgb": "MS-SSIM [dB]",
}


def style_for(name: str, index: int = 0) -> tuple[str, str]:
    """(colour, marker) for a curve: fixed for classical codecs, a cycle for the rest."""
    key = name.lower()
    for prefix in sorted(_STYLES, key=len, reverse=True):  # "jpeg 2000" before "jpeg"
        style = _STYLES[prefix]
        if key == prefix or key.startswith(prefix + " ") or key.startswith(prefix + "-"):
            return style
    return _CYCLE[index % len(_CYCLE)], "o"


def _xy(result: dict, metric: str):
    res = result["results"]
    if metric not in res:
        return None
    x, y = np.asarray(res["bpp"], float), np.asarray(res[metric], float)
    if metric == "ms-ssim-rgb":
        y = msssim_db(y)
    order = np.argsort(x)
    return x[order], y[order]


def rd_plot(
    results: Iterable[dict],
    metric: str = "psnr-rgb",
    ax=None,
    reference: Iterable[dict] = (),
    max_bpp: float | None = None,
    title: str | None = None,
    legend: bool = True,
):
    """Plot distortion against bits per pixel for several codecs on one axis.

    ``results`` are drawn as solid lines with markers; ``reference`` curves (e.g. published
    results on another data set) as thin dashed lines, labelled as such by their names.
    ``legend=False`` leaves the legend to the caller (a figure-wide one, off the data).
    Returns the axis.
    """
    ax = ax or plt.gca()
    for i, result in enumerate(results):
        xy = _xy(result, metric)
        if xy is None:
            continue
        colour, marker = style_for(result["name"], i)
        ax.plot(*xy, marker=marker, color=colour, label=result["name"], lw=1.8, ms=5)
    for i, result in enumerate(reference):
        xy = _xy(result, metric)
        if xy is None:
            continue
        colour, _ = style_for(result["name"], i + 3)
        ax.plot(*xy, ls="--", lw=1, color=colour, alpha=0.7, label=result["name"])
    ax.set_xlabel("bits per pixel (bpp)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if max_bpp is not None:
        ax.set_xlim(0, max_bpp)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_lines():
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def rd_figure(results: Sequence[dict], reference: Sequence[dict] = (), max_bpp=None, suptitle=None,
              zoom: Sequence[str] = (), margin: float = 0.15):
    """PSNR and MS-SSIM rate–distortion curves side by side, one legend below them, off the
    data; returns the figure. ``zoom``: names of the curves each axis is zoomed to (their
    points up to ``max_bpp``, with a ``margin`` of their span), as in :func:`rd_panels`."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric in zip(axes, ("psnr-rgb", "ms-ssim-rgb")):
        rd_plot(results, metric, ax, reference, max_bpp, legend=False)
        named = [xy for r in list(results) + list(reference) if r["name"] in zoom
                 for xy in [_xy(r, metric)] if xy is not None]
        if named:
            _zoom(ax, named, margin, max_bpp)
    _legend_below(fig, axes, suptitle)
    return fig


def _zoom(ax, curves, margin: float, max_bpp: float | None = None) -> None:
    """Zoom ``ax`` to the points of ``curves`` (``(x, y)`` arrays) at up to ``max_bpp``."""
    x, y = (np.concatenate(v) for v in zip(*curves))
    keep = x <= max_bpp if max_bpp is not None else np.ones_like(x, dtype=bool)
    x, y = x[keep], y[keep]
    if not len(x):
        return
    ax.set_xlim(0, max_bpp if max_bpp is not None else x.max() * (1 + margin))
    pad = margin * max(y.max() - y.min(), 1e-6)
    ax.set_ylim(y.min() - pad, y.max() + pad)


def _legend_below(fig, axes, suptitle: str | None) -> None:
    """One legend for all of ``axes`` below them (each label once), and the figure's title."""
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 4), fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, min(0.05 + 0.05 * rows, 0.4), 1, 1))


def rd_panels(panels: dict[str, Sequence[dict]], zoom: Sequence[str] = (), metric: str = "psnr-rgb",
              suptitle: str | None = None, margin: float = 0.15):
    """One rate–distortion panel per photo set, side by side: ``panels`` is ``{title: curves}``.

    Curves of the same name look the same in every panel, and one legend below the panels names
    them all, off the data. Each axis is zoomed to the curves named in ``zoom`` (every curve if
    empty) with a ``margin`` (a fraction of their span): the range where the learned curves are,
    not where the classical ones run on to high rates. Returns the figure.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    names = list(dict.fromkeys(c["name"] for curves in panels.values() for c in curves))
    for ax, (title, curves) in zip(axes[0], panels.items()):
        shown = []  # the (x, y) the axis zooms to
        for curve in curves:
            xy = _xy(curve, metric)
            if xy is None:
                continue
            colour, marker = style_for(curve["name"], names.index(curve["name"]))
            ax.plot(*xy, marker=marker, color=colour, label=curve["name"], lw=1.8, ms=5)
            if not zoom or curve["name"] in zoom:
                shown.append(xy)
        if shown:
            _zoom(ax, shown, margin)
        ax.set_xlabel("bits per pixel (bpp)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    _legend_below(fig, axes[0], suptitle)
    return fig


def rate_difference_figure(curves: Sequence[dict], anchor: dict, suptitle: str | None = None, points: int = 200):
    """The rate of each curve against ``anchor``'s at equal quality, in percent, along the
    quality axis (:func:`lictutor.metrics.rate_difference`): one panel for PSNR, one for
    MS-SSIM, each curve over the range it shares with the anchor, labelled with its BD-rate
    (the average of what is drawn) in a legend below its panel. Where RD curves lie within a line's
    width of each other, this shows their differences and where along the curve they arise.
    A pair that allows no BD-rate (quality not rising with rate, no overlap: an undertrained
    model) is left out of its panel and labelled "not comparable". Returns the figure."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric in zip(axes, ("psnr-rgb", "ms-ssim-rgb")):
        xa, ya = _xy(anchor, metric)
        for i, curve in enumerate(curves):
            x, y = _xy(curve, metric)
            colour, _ = style_for(curve["name"], i)
            try:
                label = f"{curve['name']} ({bd_rate(xa, ya, x, y):+.1f} % BD-rate)"
            except LictutorError:
                ax.plot([], [], color=colour, lw=1.8, label=f"{curve['name']} (not comparable)")
                continue
            quality = np.linspace(max(ya.min(), y.min()), min(ya.max(), y.max()), points)
            ax.plot(quality, rate_difference(xa, ya, x, y, quality), color=colour, lw=1.8, label=label)
            ax.plot(y, rate_difference(xa, ya, x, y, y), "o", color=colour, ms=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        ax.set_ylabel(f"rate against {anchor['name']} [%]")
        ax.set_title(f"{METRIC_LABELS.get(metric, metric).split(' [')[0]}: negative is fewer bits", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_crops(
    images: Sequence[tuple[str, np.ndarray]],
    box: tuple[int, int, int, int] | None = None,
    ncols: int | None = None,
    size: float = 3.2,
):
    """Show the same region of several images side by side, titled by their labels.

    ``images`` are (label, uint8 H×W×3 array) pairs, e.g. the original and each codec's
    reconstruction at a matched rate; ``box`` is (top, left, height, width) in pixels
    (default: the whole image). Returns the figure.
    """
    ncols = ncols or min(len(images), 4)
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, img) in zip(axes.flat, images):
        if box is not None:
            top, left, h, w = box
            img = img[top : top + h, left : left + w]
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return fig


def conditional_histogram(a, b, ax=None, bins: int = 41, limit: float | None = None, title: str | None = None):
    """Image of the conditional histogram p(b | a) of two paired samples, each column
    normalized to its maximum (Simoncelli's "bow-tie" plot).

    Independent variables give a picture whose columns all look alike; a bow tie, columns
    that widen with ``|a|``, shows that the *spread* of ``b`` depends on the size of ``a``,
    the dependency divisive normalization (GDN) removes. ``limit`` bounds both axes
    (default: the 99.5th percentile of ``|a|`` and ``|b|``). Returns the axis.
    """
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError("a and b must be non-empty and of equal size")
    limit = limit or float(np.percentile(np.abs(np.concatenate([a, b])), 99.5))
    edges = np.linspace(-limit, limit, bins + 1)
    counts, _, _ = np.histogram2d(a, b, bins=[edges, edges])
    counts = counts / np.maximum(counts.max(axis=1, keepdims=True), 1)
    ax = ax or plt.gca()
    ax.imshow(counts.T, origin="lower", extent=[-limit, limit, -limit, limit], cmap="gray_r", aspect="auto")
    ax.set_xlabel("a"); ax.set_ylabel("b")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def channel_density(bottleneck, values, channel: int, ax=None, title: str | None = None, seed: int = 0):
    """One channel of a factorized prior against its data (Ballé et al. 2017, sec. 2.2).

    Draws, for the latents ``values`` of ``channel`` (continuous ``y``, any shape): the
    frequencies of the rounded ``ŷ = round(y − m) + m`` (bars; ``m`` the channel's median),
    the histogram of the noisy ``y + u`` (``u ~ U(−½, ½)``, drawn from ``seed``), the model's
    density ``p(ỹ) = c(ỹ + ½) − c(ỹ − ½)`` of ``bottleneck`` (an
    :class:`~lictutor.entropy.EntropyBottleneck`) and its mass at the quantization points.
    At those points the density of ``y + u`` equals the frequency of ``ŷ``, whatever the
    model; the coder pays ``−log2`` of the *model's* mass. Returns the axis.
    """
    y = torch.as_tensor(values, dtype=torch.float32).detach().flatten().cpu()
    median = float(bottleneck.quantiles[channel, 0, 1].detach())
    noisy = y + torch.rand(y.shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    low, high = float(y.min()) - 2, float(y.max()) + 2
    grid = torch.linspace(low, high, 800)
    points = torch.arange(math.floor(low - median), math.ceil(high - median) + 1) + median

    def likelihood(v):
        with torch.no_grad():
            rows = v.reshape(1, 1, -1).expand(1, bottleneck.channels, -1).to(bottleneck.quantiles.device)
            return bottleneck.likelihood(rows)[0, channel].cpu()

    ax = ax or plt.gca()
    levels, counts = torch.unique(torch.round(y - median) + median, return_counts=True)
    ax.bar(levels, counts / counts.sum(), width=0.25, color="C1", alpha=0.7, label="rounded ŷ (frequency)")
    ax.hist(noisy.numpy(), bins=120, density=True, histtype="step", color="C0", label="noisy y + u (density)")
    ax.plot(grid, likelihood(grid), "k", lw=1.2, label="model density p(ỹ)")
    ax.plot(points, likelihood(points), "kx", label="model mass at the quantization points")
    ax.set_xlim(float(points.min()), float(points.max()))
    ax.set_xlabel(f"latent channel {channel}")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def channel_densities(bottleneck, latents, channels: Sequence[int], titles: Sequence[str] = (),
                      suptitle: str | None = None):
    """:func:`channel_density` for several ``channels`` side by side, one legend below them.
    ``latents`` is (C, N) or (1, C, N): every channel's values, e.g. ``g_a`` of some photos,
    flattened. Returns the figure."""
    latents = torch.as_tensor(latents).reshape(bottleneck.channels, -1)
    fig, axes = plt.subplots(1, len(channels), figsize=(4.6 * len(channels), 3.6), squeeze=False)
    for i, (ax, channel) in enumerate(zip(axes[0], channels)):
        channel_density(bottleneck, latents[channel], channel, ax, titles[i] if i < len(titles) else None)
    _legend_below(fig, axes[0], suptitle)
    return fig
