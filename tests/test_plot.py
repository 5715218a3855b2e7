import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from lictutor import plot
from lictutor.metrics import msssim_db
from lictutor.plot import rd_figure, rd_plot, show_crops, style_for


def _curve(name, shift=0.0):
    bpp = [0.25, 0.5, 1.0, 2.0]
    return {"name": name, "results": {"bpp": bpp, "psnr-rgb": [28 + shift, 31 + shift, 34 + shift, 38 + shift],
                                      "ms-ssim-rgb": [0.9, 0.95, 0.98, 0.99]}}


def test_msssim_db():
    assert msssim_db(0.99) == pytest.approx(20.0)
    assert np.allclose(msssim_db([0.9, 0.999]), [10.0, 30.0])


def test_rd_plot_draws_each_curve():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    rd_plot([_curve("JPEG"), _curve("ours", 2)], ax=ax, reference=[_curve("VTM (Kodak)", 4)])
    assert len(ax.get_lines()) == 3
    xs, ys = ax.get_lines()[1].get_data()
    assert list(xs) == [0.25, 0.5, 1.0, 2.0] and ys[0] == 30
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["JPEG", "ours", "VTM (Kodak)"]
    plt.close(fig)


def test_rd_plot_skips_missing_metric_and_sorts_by_rate():
    import matplotlib.pyplot as plt

    curve = {"name": "x", "results": {"bpp": [1.0, 0.5], "psnr-rgb": [34, 30]}}
    fig, ax = plt.subplots()
    rd_plot([curve], metric="ms-ssim-rgb", ax=ax)
    assert len(ax.get_lines()) == 0
    rd_plot([curve], metric="psnr-rgb", ax=ax)
    assert list(ax.get_lines()[0].get_data()[0]) == [0.5, 1.0]
    plt.close(fig)


def test_rd_figure_and_crops():
    import matplotlib.pyplot as plt

    fig = rd_figure([_curve("JPEG")])
    assert len(fig.axes) == 2
    plt.close(fig)
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 30:40] = 255
    fig = show_crops([("a", img), ("b", img)], box=(10, 30, 10, 10))
    shown = fig.axes[0].get_images()[0].get_array()
    assert shown.shape == (10, 10, 3) and shown.min() == 255
    plt.close(fig)


def test_classical_codecs_keep_their_style():
    assert style_for("JPEG") == style_for("jpeg")
    assert style_for("JPEG 2000") != style_for("JPEG")
    assert style_for("my model", 0) != style_for("my model", 1)


def test_conditional_histogram_columns_are_normalized():
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    a = rng.normal(size=20000)
    b = rng.normal(size=20000) * np.abs(a)  # spread of b grows with |a|: a bow tie
    fig, ax = plt.subplots()
    plot.conditional_histogram(a, b, ax, bins=21, limit=3)
    image = ax.get_images()[0].get_array()
    assert image.shape == (21, 21)
    filled = image.max(axis=0) > 0
    np.testing.assert_allclose(image.max(axis=0)[filled], 1.0)
    centre, edge = image[:, 10], image[:, 2]  # the column at a≈0 is narrow, far columns wide
    assert (centre > 0.1).sum() < (edge > 0.1).sum()
    plt.close(fig)


def test_rd_panels_share_styles_and_zoom_to_the_named_curves():
    ours = {"name": "ours", "results": {"bpp": [0.1, 0.2, 0.4], "psnr-rgb": [28.0, 29.0, 30.0]}}
    jpeg = {"name": "JPEG", "results": {"bpp": [0.2, 1.0, 3.0], "psnr-rgb": [26.0, 33.0, 40.0]}}
    fig = plot.rd_panels({"a": [ours, jpeg], "b": [jpeg, ours]}, zoom=["ours"])
    a, b = fig.axes
    assert [ax.get_title() for ax in (a, b)] == ["a", "b"]
    assert a.get_xlim()[1] == pytest.approx(0.4 * 1.15) and a.get_ylim() == pytest.approx((27.7, 30.3))
    colour = {ax: {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in (a, b)}
    assert colour[a] == colour[b] and colour[a]["JPEG"] == plot.style_for("JPEG")[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ours", "JPEG"]
    matplotlib.pyplot.close(fig)


def test_rd_figure_has_one_legend_below_the_axes_and_zooms_to_named_curves():
    import matplotlib.pyplot as plt

    fig = rd_figure([_curve("ours"), _curve("JPEG", 6)], reference=[_curve("VTM (Kodak)", 8)], max_bpp=1.0,
                    zoom=["ours"])
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend on the data
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ours", "JPEG", "VTM (Kodak)"]
    assert legend.get_window_extent().y1 <= min(ax.get_window_extent().y0 for ax in fig.axes)
    low, high = fig.axes[0].get_ylim()  # ours up to 1 bpp: 28 to 34 dB, with a margin
    assert 27 < low < 28 and 34 < high < 35 and fig.axes[0].get_xlim() == (0, 1.0)
    plt.close(fig)


def test_channel_densities_draw_each_channel_against_the_model():
    import matplotlib.pyplot as plt
    import torch

    from lictutor.entropy import EntropyBottleneck

    torch.manual_seed(0)
    bottleneck = EntropyBottleneck(4)
    latents = torch.randn(4, 2000) * torch.tensor([0.5, 1.0, 3.0, 6.0])[:, None]
    fig = plot.channel_densities(bottleneck, latents[None], [3, 1], titles=["wide", "narrow"])
    assert [ax.get_title() for ax in fig.axes] == ["wide", "narrow"]
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    ax = fig.axes[0]
    bars = [patch.get_height() for patch in ax.containers[0]]
    assert sum(bars) == pytest.approx(1.0)  # the rounded values' frequencies
    points, mass = ax.get_lines()[-1].get_data()  # the model's mass at the quantization points
    with torch.no_grad():
        rows = torch.as_tensor(points, dtype=torch.float32).reshape(1, 1, -1).expand(1, 4, -1)
        expected = bottleneck.likelihood(rows)[0, 3].numpy()
    assert np.allclose(mass, expected)
    median = float(bottleneck.quantiles[3, 0, 1].detach())
    assert np.allclose((points - median) % 1, 0, atol=1e-5) or np.allclose((points - median) % 1, 1, atol=1e-5)
    assert ax.get_xlim()[0] <= latents[3].min() and ax.get_xlim()[1] >= latents[3].max()
    plt.close(fig)


def test_rate_difference_figure_draws_each_curve_over_its_shared_range():
    anchor = _curve("factorized")
    better = {"name": "context", "results": {**anchor["results"], "bpp": [0.9 * b for b in anchor["results"]["bpp"]]}}
    fig = plot.rate_difference_figure([better, _curve("shifted", 1.0)], anchor, suptitle="against the factorized prior")
    psnr_axis = fig.axes[0]
    line, points = psnr_axis.get_lines()[:2]
    assert np.allclose(line.get_ydata(), -10.0) and np.allclose(points.get_ydata(), -10.0)
    quality = psnr_axis.get_lines()[2].get_xdata()  # 'shifted' covers 29–39 dB, the anchor 28–38 dB
    assert quality.min() == pytest.approx(29.0) and quality.max() == pytest.approx(38.0)
    labels = [t.get_text() for t in psnr_axis.get_legend().get_texts()]
    assert labels[0] == "context (-10.0 % BD-rate)"
    assert fig._suptitle.get_text() == "against the factorized prior"
    flat = {"name": "undertrained", "results": {"bpp": [0.5, 0.5, 0.6, 0.6], "psnr-rgb": [9.5, 9.6, 9.6, 9.7],
                                                "ms-ssim-rgb": [0.5, 0.6, 0.6, 0.7]}}
    fig = plot.rate_difference_figure([flat], anchor)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["undertrained (not comparable)"]
