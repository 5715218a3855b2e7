"""Image quality, rate and rate–distortion comparison metrics.

- :func:`psnr`, :func:`ms_ssim`: distortion between an image and its reconstruction,
  computed like CompressAI's ``psnr-rgb`` and ``ms-ssim-rgb``; :func:`msssim_db` puts MS-SSIM
  on a decibel scale.
- :func:`nlp_distance`: the normalized Laplacian pyramid distance, a perceptual metric that
  is also a training loss.
- :func:`bpp_from_bytes`, :func:`bpp_from_likelihoods`: rate in bits per pixel, from a real
  bitstream or from a model's likelihoods (the estimate used during training).
- :func:`bd_rate`, :func:`bd_psnr`: Bjøntegaard deltas between two rate–distortion curves.

Images are either NumPy arrays, channel-last (``H×W×3``), or PyTorch tensors, channel-first
(``3×H×W`` or ``N×3×H×W``). ``uint8`` images are on the 0–255 scale; float images on 0–1.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as _ms_ssim
from scipy.interpolate import Akima1DInterpolator, PchipInterpolator

from lictutor.device import float64
from lictutor.errors import LictutorError
from lictutor.images import as_batch

MS_SSIM_MIN_SIDE = 161  # 5 scales, 11×11 window: the smallest side must exceed (11 - 1) · 2⁴
BD_METHODS = ("akima", "pchip", "cubic")


def _as_tensor(x):
    """Return ``x`` as a float64 tensor and the peak value of its scale (255 or 1)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x))  # a copy: decoded images may be read-only views
    if not isinstance(x, torch.Tensor):
        raise LictutorError(f"expected a NumPy array or a torch tensor, got {type(x).__name__}")
    peak = 255.0 if x.dtype == torch.uint8 else 1.0
    return float64(x.detach()), peak


def psnr(a, b, peak=None):
    """Peak signal-to-noise ratio in dB, ``10·log10(peak² / MSE)``.

    The MSE runs over all pixels and all three channels (CompressAI's ``psnr-rgb``). ``peak``
    defaults to 255 for ``uint8`` inputs and 1 for float inputs. A 4-D input is a batch: the
    result is then the mean of the per-image PSNRs (not the PSNR of the batch MSE). Identical
    images give ``inf``.
    """
    x, peak_a = _as_tensor(a)
    y, peak_b = _as_tensor(b)
    if x.shape != y.shape:
        raise LictutorError(f"psnr needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if peak_a != peak_b:
        raise LictutorError("psnr got one uint8 image (0–255) and one float image (0–1); convert one of them")
    peak = peak_a if peak is None else float(peak)
    dims = tuple(range(1, x.dim())) if x.dim() == 4 else tuple(range(x.dim()))
    mse = ((x - y) ** 2).mean(dim=dims)
    values = 10 * torch.log10(peak**2 / mse)  # mse = 0 gives inf
    return values.mean().item()


def _image_pair(a, b, metric, min_side, why):
    """``a`` and ``b`` as N×3×H×W tensors of one shape, each side at least ``min_side``."""
    x, y = as_batch(a), as_batch(b)
    if x.shape != y.shape:
        raise LictutorError(f"{metric} needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < min_side:
        raise LictutorError(
            f"{metric} needs images at least {min_side} pixels on each side ({why}), "
            f"got {x.shape[-2]}×{x.shape[-1]}"
        )
    return x, y


def ms_ssim(a, b):
    """Multi-scale SSIM (Wang et al., 2003) on the 0–1 scale, via ``pytorch_msssim``.

    Five scales with an 11×11 Gaussian window, so the smaller image side must be at least
    161 pixels. For a batch the result is the mean over images. NumPy inputs give a float;
    tensor inputs give a 0-dim tensor that carries gradients, so ``1 − ms_ssim(x_hat, x)``
    is a training loss.
    """
    x, y = _image_pair(a, b, "ms_ssim", MS_SSIM_MIN_SIDE, "5 scales of an 11×11 window")
    value = _ms_ssim(x, y, data_range=1.0)
    return value.item() if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) else value


def msssim_db(value):
    """MS-SSIM on a decibel scale, :math:`-10 \\log_{10}(1 - \\text{MS-SSIM})`.

    Spreads out the values near 1 where codecs differ, as CompressAI's plots do.
    """
    value = np.asarray(value, dtype=float)
    return -10 * np.log10(np.clip(1 - value, 1e-12, None))


def bpp_from_bytes(num_bytes, height, width):
    """Bits per pixel of a real bitstream: ``8 · num_bytes / (height · width)``."""
    if height <= 0 or width <= 0:
        raise LictutorError(f"image size must be positive, got {height}×{width}")
    return 8 * num_bytes / (height * width)


def bpp_from_likelihoods(likelihoods, num_pixels):
    """Estimated bits per pixel from a model's likelihoods: ``Σ −log2(p) / num_pixels``.

    ``likelihoods`` is a tensor or a dict of tensors (CompressAI's ``out["likelihoods"]``,
    e.g. ``{"y": ..., "z": ...}``); the sum runs over all of them, as in CompressAI's
    ``RateDistortionLoss``. Differentiable: use it as the rate term of the loss.
    """
    if num_pixels <= 0:
        raise LictutorError(f"num_pixels must be positive, got {num_pixels}")
    tensors = likelihoods.values() if isinstance(likelihoods, dict) else [likelihoods]
    return sum(torch.log(p).sum() / (-math.log(2) * num_pixels) for p in tensors)


def _curve(rate, dist, which, min_points):
    """Validate one rate–distortion curve; return (rate, dist) as arrays sorted by rate."""
    rate = np.asarray(rate, dtype=np.float64).ravel()
    dist = np.asarray(dist, dtype=np.float64).ravel()
    if rate.size != dist.size:
        raise LictutorError(f"{which} curve has {rate.size} rates but {dist.size} distortion values")
    if rate.size < min_points:
        raise LictutorError(f"{which} curve has {rate.size} points; this method needs at least {min_points}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(dist)) and np.all(rate > 0)):
        raise LictutorError(f"{which} curve needs finite values and positive rates, got rate={rate}, dist={dist}")
    order = np.argsort(rate)
    rate, dist = rate[order], dist[order]
    if np.any(np.diff(rate) <= 0) or np.any(np.diff(dist) <= 0):
        raise LictutorError(
            f"{which} curve is not monotonic: quality must rise strictly with rate, got rate={rate}, dist={dist}"
        )
    return rate, dist


def _mean_gap(x_anchor, y_anchor, x_test, y_test, method, interval=None):
    """Mean of ``y_test(x) − y_anchor(x)`` over the overlap of the two ``x`` ranges, or over
    ``interval = (x_L, x_H)``, which must lie inside both.

    Each curve ``y(x)`` is interpolated (Akima or PCHIP) or fitted by a cubic polynomial
    (VCEG-M33), then integrated exactly: ``(1 / (x_H − x_L)) ∫ [y_test − y_anchor] dx``.
    """
    lo = max(x_anchor.min(), x_test.min())
    hi = min(x_anchor.max(), x_test.max())
    if hi <= lo:
        raise LictutorError(
            f"the curves do not overlap: anchor spans [{x_anchor.min():.4g}, {x_anchor.max():.4g}], "
            f"test spans [{x_test.min():.4g}, {x_test.max():.4g}]"
        )
    if interval is not None:
        if not (lo <= interval[0] < interval[1] <= hi):
            raise LictutorError(f"the interval [{interval[0]:.4g}, {interval[1]:.4g}] is not a range inside the one "
                                f"both curves cover, [{lo:.4g}, {hi:.4g}]")
        lo, hi = interval

    def integral(x, y):
        if method == "cubic":
            antiderivative = np.polyint(np.polyfit(x, y, 3))
            return np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo)
        interpolator = Akima1DInterpolator if method == "akima" else PchipInterpolator
        return interpolator(x, y).integrate(lo, hi)

    return float(integral(x_test, y_test) - integral(x_anchor, y_anchor)) / (hi - lo)


def _bd_curves(rate_anchor, dist_anchor, rate_test, dist_test, method):
    if method not in BD_METHODS:
        raise LictutorError(f"unknown BD interpolation method {method!r}; choose one of {', '.join(BD_METHODS)}")
    min_points = 4 if method == "cubic" else 2
    return (
        *_curve(rate_anchor, dist_anchor, "anchor", min_points),
        *_curve(rate_test, dist_test, "test", min_points),
    )


def bd_rate(rate_anchor, dist_anchor, rate_test, dist_test, method="akima", interval=None):
    """Bjøntegaard delta rate in percent: the average rate difference at equal quality.

    ``ΔR = exp( (1 / (D_H − D_L)) ∫ [ln R_test(D) − ln R_anchor(D)] dD ) − 1``, over the
    quality range ``[D_L, D_H]`` both curves cover, or over ``interval = (D_L, D_H)`` inside
    it: one range for several test curves against the same anchor makes their numbers
    comparable, since each curve's own overlap with the anchor differs (the ratio of two RD
    curves' rates varies with quality). Negative means the test codec needs fewer
    bits. ``dist_*`` is a quality where higher is better (PSNR in dB, MS-SSIM in dB); the rate
    unit does not matter. ``method`` interpolates ``ln R`` as a function of ``D``:

    - ``"akima"`` (default): Akima spline, the most stable choice (Herglotz et al., ICIP 2022);
    - ``"pchip"``: piecewise cubic Hermite, as in the JCT-VC/JVET common test conditions sheets;
    - ``"cubic"``: one least-squares cubic polynomial, the original VCEG-M33 method.

    Each curve needs at least 4 points for ``"cubic"`` and 2 for the others (4 or more make
    the number trustworthy), positive rates, and quality rising strictly with rate.
    """
    rate_anchor, dist_anchor, rate_test, dist_test = _bd_curves(rate_anchor, dist_anchor, rate_test, dist_test, method)
    gap = _mean_gap(dist_anchor, np.log(rate_anchor), dist_test, np.log(rate_test), method, interval)
    return (math.exp(gap) - 1) * 100


def rate_difference(rate_anchor, dist_anchor, rate_test, dist_test, dist, method="akima"):
    """The rate difference in percent at each quality in ``dist``: what :func:`bd_rate` averages.

    ``ΔR(D) = exp(ln R_test(D) − ln R_anchor(D)) − 1``, with ``ln R`` interpolated as a
    function of ``D`` as in :func:`bd_rate` (Akima or PCHIP; ``"cubic"`` fits one polynomial).
    Plotted over the range both curves cover, it shows where one codec gains on another, where
    the BD-rate gives one number; :func:`bd_rate` is the exponential of the mean of its logarithm.
    Qualities outside that range are ``nan``. Same inputs and checks as :func:`bd_rate`.
    """
    rate_anchor, dist_anchor, rate_test, dist_test = _bd_curves(rate_anchor, dist_anchor, rate_test, dist_test, method)
    dist = np.asarray(dist, dtype=np.float64)
    inside = (dist >= max(dist_anchor.min(), dist_test.min())) & (dist <= min(dist_anchor.max(), dist_test.max()))

    def log_rate(d, r):
        if method == "cubic":
            return np.polyval(np.polyfit(d, np.log(r), 3), dist)
        interpolator = Akima1DInterpolator if method == "akima" else PchipInterpolator
        return interpolator(d, np.log(r))(dist)

    gap = log_rate(dist_test, rate_test) - log_rate(dist_anchor, rate_anchor)
    return np.where(inside, (np.exp(gap) - 1) * 100, np.nan)


def bd_psnr(rate_anchor, dist_anchor, rate_test, dist_test, method="akima"):
    """Bjøntegaard delta quality (dB for PSNR): the average quality difference at equal rate.

    ``ΔD = (1 / (r_H − r_L)) ∫ [D_test(r) − D_anchor(r)] dr`` with ``r = ln R``, over the
    log-rate range both curves cover. Positive means the test codec is better. Same inputs,
    methods and checks as :func:`bd_rate`.
    """
    rate_anchor, dist_anchor, rate_test, dist_test = _bd_curves(rate_anchor, dist_anchor, rate_test, dist_test, method)
    return _mean_gap(np.log(rate_anchor), dist_anchor, np.log(rate_test), dist_test, method)


def entropy_bits(symbols):
    """Empirical first-order entropy ``H = −Σ p(s) log2 p(s)`` of integer ``symbols``, in bits.

    The fewest bits per symbol any code can reach when it codes each symbol independently with
    the symbols' own histogram as its probability model (Shannon's source coding theorem).
    """
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        raise LictutorError("entropy_bits needs at least one symbol")
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / symbols.size
    return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------------------------------------
# Normalized Laplacian pyramid distance
# ---------------------------------------------------------------------------------------------

NLP_LEVELS = 6
NLP_MIN_SIDE = 17  # the 5th down-sampling must still see 2 pixels (its mirror padding is 2 wide)
_NLP_LOWPASS = (0.05, 0.25, 0.4, 0.25, 0.05)  # Burt & Adelson (1983); the 2-D filter is its outer product
# Per level (finest first): the constant σ and the 5×5 filter P of the divisive normalization,
# learned by Laparra et al. on the McGill database (their NLP_dist.m). P is given by its non-zero
# weights, {(row, column): weight} with the centre at (2, 2).
_NLP_SIGMAS = (0.0248, 0.0185, 0.0179, 0.0191, 0.0220, 0.2782)
_NLP_FILTERS = (
    {(1, 2): 0.1011, (2, 1): 0.1493, (2, 3): 0.1460, (2, 4): 0.0072, (3, 2): 0.1015},
    {(1, 2): 0.0757, (2, 1): 0.1986, (2, 3): 0.1846, (3, 2): 0.0837},
    {(1, 2): 0.0477, (2, 1): 0.2138, (2, 3): 0.2243, (3, 2): 0.0467},
    {(2, 1): 0.2503, (2, 3): 0.2616},
    {(2, 1): 0.2598, (2, 3): 0.2552},
    {(2, 1): 0.2215, (2, 3): 0.0717},
)


def _pad_symmetric(x, p):
    """Mirror-pad the last two dimensions by ``p``, repeating the edge pixel (MATLAB's
    ``'symmetric'``; PyTorch's ``'reflect'`` does not repeat it)."""
    x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)


def _pyramid_down(x, lowpass):
    """Low-pass filter (mirror padding), then keep every other row and column."""
    return F.conv2d(_pad_symmetric(x, 2), lowpass, stride=2)


def _pyramid_up(x, lowpass, size):
    """Expand back to ``size``, as NLP_dist.m does: pad by replicating the border, insert
    zeros between pixels, filter with 4× the low-pass and crop. Inserting zeros and then
    filtering is a transposed convolution of stride 2 (4× cheaper than filtering the zeros)."""
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv_transpose2d(x, 4 * lowpass, stride=2)[..., 4 : 4 + size[0], 4 : 4 + size[1]]


def _nlp_transform(x):
    """The normalized Laplacian pyramid of grey-scale images ``x`` (B×1×H×W, 0–1).

    Laplacian pyramid (Burt & Adelson 1983), then every coefficient divided by ``σ`` plus a
    weighted sum of its neighbours' amplitudes (Laparra et al. 2016):
    ``z = l / (σ + P ∗ |l|)``. Returns the six levels, finest first.
    """
    f = x.new_tensor(_NLP_LOWPASS)
    lowpass = torch.outer(f, f)[None, None]
    levels = []
    for _ in range(NLP_LEVELS - 1):
        low = _pyramid_down(x, lowpass)
        levels.append(x - _pyramid_up(low, lowpass, x.shape[-2:]))
        x = low
    levels.append(x)  # the low-pass residual
    normalized = []
    for level, sigma, weights in zip(levels, _NLP_SIGMAS, _NLP_FILTERS):
        p = x.new_zeros(1, 1, 5, 5)
        for (row, col), w in weights.items():
            p[0, 0, row, col] = w
        # conv2d correlates; NLP_dist.m convolves (conv2), hence the flipped filter.
        amplitude = F.conv2d(level.abs(), p.flip(-2, -1), padding=2)
        normalized.append(level / (sigma + amplitude))
    return normalized


def _sqrt0(t):
    """``sqrt(t)`` whose gradient at ``t = 0`` is 0 instead of NaN (identical images)."""
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), 0.0)


def nlp_distance(a, b):
    """Normalized Laplacian pyramid distance (Laparra, Ballé, Berardino & Simoncelli 2016,
    "Perceptual image quality assessment using a normalized Laplacian pyramid").

    Both images go through :func:`_nlp_transform` (six levels); the distance is the mean over
    levels of the root-mean-square difference of the normalized coefficients, with the
    paper's filters and constants (from its reference code, NLP_dist.m). 0 for identical
    images, larger is worse. Ballé, Laparra & Simoncelli (2016), "End-to-end optimization of
    nonlinear transform codes for perceptual quality", trained codecs with it.

    The metric is defined on grey-scale images. Here it is applied to the R, G and B channels
    separately (each as a grey image on the 0–1 scale) and averaged, so that colour errors
    count: on luminance alone a codec could spend no bits on colour. A batch gives the mean
    over images. Images need at least :data:`NLP_MIN_SIDE` pixels on each side. Like
    :func:`ms_ssim`, NumPy inputs give a float and tensors a differentiable 0-dim tensor.
    """
    x, y = _image_pair(a, b, "nlp_distance", NLP_MIN_SIDE, f"{NLP_LEVELS} pyramid levels")
    n, c, h, w = x.shape
    levels_x = _nlp_transform(x.reshape(n * c, 1, h, w))
    levels_y = _nlp_transform(y.reshape(n * c, 1, h, w))
    rms = [_sqrt0(((zx - zy) ** 2).mean(dim=(1, 2, 3))) for zx, zy in zip(levels_x, levels_y)]
    value = torch.stack(rms).mean()  # over levels, channels and images (all equally sized)
    return value.item() if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) else value
