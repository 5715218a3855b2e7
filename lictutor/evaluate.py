"""Real bitstreams: code images of any size to ``.lic`` files with a learned model, and measure
rate–distortion curves from the bytes actually written.

* :func:`compress_image` / :func:`decompress_image`: one ``uint8`` H×W×3 image to the bytes of
  a ``.lic`` file (:mod:`lictutor.bitstream`) and back.
* :func:`evaluate_model`: bpp (from whole files, header included), PSNR, MS-SSIM and coding
  times of one or more models on a list of images, in CompressAI's results schema
  (:mod:`lictutor.results`).
* :func:`relaxation_gap`: what training measured (noisy latents) against what decoding gets
  (rounded latents) and what the file costs, for one model.

The image is padded on the bottom and right, by repeating its last row and column, to a
multiple of the model's ``downsampling_factor`` (16 for the factorized models, 64 for the
hyperprior family), and cropped back after decoding; the file records the original size.

The file's configuration hash covers every tensor the *decoder* uses: all of the model's
state but its analysis transforms ``g_a`` and ``h_a``. A file therefore decodes only with the
very model that wrote it (or one with the same decoder, such as a distilled encoder's), and
decoding with another checkpoint is an error rather than a wrong image. Any problem found
while decoding -- a damaged, truncated or forged file -- raises :class:`LictutorError`.
"""

from __future__ import annotations

import inspect
import os
from functools import partial

import numpy as np
import torch
from PIL import Image

from lictutor import bitstream
from lictutor.checkpoint import load_checkpoint, weights_digest
from lictutor.curves import by_rate, mean_over_images, measure
from lictutor.entropy import update_stale_tables
from lictutor.errors import LictutorError
from lictutor.images import pad, to_tensor, to_uint8  # pad re-exported: chapters use it from here
from lictutor.metrics import psnr

__all__ = ["compress_image", "decompress_image", "evaluate_model", "latent_shape", "relaxation_gap", "channel_bits"]

#: prefixes of the state-dict entries only the encoder uses (left out of the config hash)
_ENCODER_ONLY = ("g_a.", "h_a.")


def latent_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    """The ``shape`` a model with down-sampling ``stride`` reports for an image of this size
    (the spatial size of its smallest latent, after padding)."""
    return -(-height // stride), -(-width // stride)


def compress_image(model, img: np.ndarray, model_name: str, progress: bool = False) -> bytes:
    """The bytes of a ``.lic`` file holding ``img`` (``uint8`` H×W×3) coded by ``model``.

    ``model_name`` is its name in :data:`lictutor.models.MODELS` (a checkpoint's ``"model"``).
    Stale CDF tables are rebuilt first (see :mod:`lictutor.entropy.base`). ``progress``: passed
    to models whose coding is slow enough to show a bar (the serial context model's).
    """
    x = to_tensor(img)[None]  # checks the image
    height, width = img.shape[:2]
    _check_size(height, width)
    config = _prepare(model, model_name)
    stride = model.downsampling_factor
    with torch.no_grad():
        out = model.compress(pad(x, stride).to(_device(model)), **_progress(model.compress, progress))
    shape = tuple(int(d) for d in out["shape"])
    if shape != latent_shape(height, width, stride):
        raise LictutorError(
            f"{model_name}.compress() returned latent shape {shape} for a {height}×{width} image; "
            f"expected {latent_shape(height, width, stride)} (is its downsampling_factor right?)"
        )
    strings = [[bytes(s) for s in group] for group in out["strings"]]
    sections = {tag: bytes(data) for tag, data in out.get("sections", {}).items()}  # e.g. sent weights
    return bitstream.pack(bitstream.Payload(model_name, config, (height, width), shape, strings, sections))


def decompress_image(model, data: bytes, model_name: str, progress: bool = False) -> np.ndarray:
    """Decode the bytes of a ``.lic`` file written by :func:`compress_image` with this model.

    Returns ``uint8`` H×W×3 at the original size. A file that is damaged, truncated, or
    written by another model or checkpoint raises :class:`LictutorError` saying so.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LictutorError(f"expected the bytes of a .lic file, got {type(data).__name__}")
    payload = bitstream.unpack(bytes(data), model=model_name, config=_prepare(model, model_name))
    height, width = payload.image_size
    _check_size(height, width)
    stride = model.downsampling_factor
    if payload.shape != latent_shape(height, width, stride):
        raise LictutorError(
            f"corrupted .lic file: latent shape {payload.shape} does not fit a {height}×{width} image"
        )
    if any(len(group) != 1 for group in payload.strings):
        raise LictutorError("corrupted .lic file: expected one string per latent")
    extra = _progress(model.decompress, progress)
    if payload.sections:
        if "sections" not in inspect.signature(model.decompress).parameters:
            raise LictutorError(f"this file carries sections ({', '.join(payload.sections)}) that {model_name} cannot read")
        extra["sections"] = payload.sections
    try:
        with torch.no_grad():
            x_hat = model.decompress(payload.strings, payload.shape, **extra)["x_hat"]
    except Exception as err:  # whatever the model's code raises on data it cannot decode
        detail = str(err) if isinstance(err, LictutorError) else f"{type(err).__name__}: {err}"
        raise LictutorError(f"corrupted .lic file: {detail}") from None
    padded = (1, 3, *(stride * d for d in payload.shape))
    if tuple(x_hat.shape) != padded or not bool(torch.isfinite(x_hat).all()):
        raise LictutorError("corrupted .lic file: the decoder produced no valid image")
    return to_uint8(x_hat[..., :height, :width])


def evaluate_model(models, images, name: str | None = None, progress: bool = True) -> dict:
    """Rate–distortion curve of learned models on ``images``, in CompressAI's results schema.

    ``models``: a checkpoint path, a ``(model, model_name)`` pair, or a list of these, one
    rate point each (e.g. one checkpoint per λ). ``images``: ``(name, uint8 H×W×3)`` pairs.
    Every image is coded to a real ``.lic`` file and decoded (:func:`lictutor.curves.measure`):
    ``bpp`` counts the whole file, ``header_bytes`` the container's share of it; ``psnr-rgb``
    and ``ms-ssim-rgb`` compare the decoded image; ``encoding_time`` and ``decoding_time`` are
    wall-clock seconds. Each point is the mean over images (MS-SSIM over those at least 161 px
    on a side) and points are sorted by bpp.
    """
    models = [_load(m) for m in (models if isinstance(models, list) else [models])]
    if not models or not images:
        raise LictutorError("evaluate_model needs at least one model and one image")
    coders = [(partial(compress_image, model, model_name=model_name),
               partial(decompress_image, model, model_name=model_name)) for model, model_name in models]
    values = measure(coders, images, desc="evaluate", progress=progress,
                     extras={"header_bytes": lambda data: bitstream.overhead(bitstream.unpack(data))})
    keys = ("bpp", "header_bytes", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
    names = sorted({model_name for _, model_name in models})
    return {
        "name": name or f"lictutor {'/'.join(names)}",
        "description": f"{', '.join(names)}; real .lic bitstreams, {len(images)} images",
        "results": by_rate({k: mean_over_images(values[k]).tolist() for k in keys}),
    }


def relaxation_gap(model, images, model_name: str, seed: int = 0) -> dict:
    """Rate and PSNR as training sees them, as decoding gets them, and the file's rate.

    Ballé et al. 2017 (sec. 2.2) train on noisy latents ``ỹ = y + u``, ``u ~ U(-½, ½)``, in
    place of ``ŷ = round(y)``: the rate ``-Σ log2 p(ỹ)`` stands in for the coded rate, and
    ``g_s(ỹ)`` for the decoded image. This measures both sides on ``images``
    (``(name, uint8 H×W×3)`` pairs), as the mean over images of

    * ``noisy_bpp``, ``noisy_psnr``: the model in training mode (its ``quantization``
      relaxation; noise drawn from ``seed``), the reconstruction rounded to ``uint8`` as a
      decoded image is;
    * ``rounded_bpp``, ``rounded_psnr``: the model in evaluation mode, ``ŷ = round(y)``;
    * ``file_bpp``: the bytes of the real ``.lic`` file (:func:`compress_image`, header included).

    The model's training/evaluation mode is restored afterwards.
    """
    if not images:
        raise LictutorError("relaxation_gap needs at least one image")
    was_training = model.training
    values = {k: [] for k in ("noisy_bpp", "noisy_psnr", "rounded_bpp", "rounded_psnr", "file_bpp")}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _, img in images:
                height, width = img.shape[:2]
                x = pad(to_tensor(img)[None], model.downsampling_factor).to(_device(model))
                for mode in ("noisy", "rounded"):
                    model.train(mode == "noisy")
                    out = model(x)
                    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
                    rec = to_uint8(out["x_hat"][..., :height, :width].clamp(0, 1).cpu())
                    values[f"{mode}_bpp"].append(float(bits) / (height * width))
                    values[f"{mode}_psnr"].append(psnr(img, rec))
                values["file_bpp"].append(8 * len(compress_image(model, img, model_name)) / (height * width))
    finally:
        model.train(was_training)
    return {k: float(np.mean(v)) for k, v in values.items()}


def channel_bits(model, images, relaxed: bool = False, seed: int = 0) -> torch.Tensor:
    """Bits per element of each latent channel of ``ŷ`` on ``images`` (``(name, uint8
    H×W×3)`` pairs): ``−Σ log2 p(ŷ)`` over every position of every image, from the model's
    likelihoods in evaluation mode (rounded latents), divided by the positions; a tensor of
    ``M`` values. Minnen et al. 2018 report that a codec given more channels than it
    needs switches the extra ones off: their latents become a value the prior predicts with
    probability close to 1, and they cost close to 0 bits. With ``relaxed`` the same bits as
    training counts them, ``−Σ log2 p(ỹ)`` with ``ỹ = y + u`` (Ballé et al. 2017, sec. 2.2;
    noise drawn from ``seed``). The model's mode is restored."""
    if not images:
        raise LictutorError("channel_bits needs at least one image")
    was_training, bits, positions = model.training, 0.0, 0
    model.train(relaxed)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _, img in images:
                likelihoods = model(pad(to_tensor(img)[None], model.downsampling_factor).to(_device(model)))["likelihoods"]["y"]
                bits = bits + (-torch.log2(likelihoods)).sum(dim=(0, 2, 3)).cpu()
                positions += likelihoods[0, 0].numel()
    finally:
        model.train(was_training)
    return bits / positions


def _load(item):
    """``(model, model_name)`` from a checkpoint path or such a pair."""
    if isinstance(item, (str, os.PathLike)):
        model, ckpt = load_checkpoint(item)
        return model, ckpt["model"]
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str):
        return item
    raise LictutorError(f"expected a checkpoint path or a (model, model_name) pair, got {item!r:.80}")


def _progress(method, progress: bool) -> dict:
    """``{"progress": progress}`` for a coding method that takes it, else nothing."""
    return {"progress": progress} if "progress" in inspect.signature(method).parameters else {}


def _prepare(model, model_name: str) -> bytes:
    """Rebuild stale CDF tables, then hash the decoder's configuration and weights (but those
    each file carries itself, a model's ``sent_weights()``: chapter 6's specialized part)."""
    update_stale_tables(model)
    sent = set(model.sent_weights()) if hasattr(model, "sent_weights") else set()
    decoder = {k: v for k, v in model.state_dict().items() if not k.startswith(_ENCODER_ONLY) and k not in sent}
    return bitstream.config_hash({"model": model_name, "decoder": weights_digest(decoder)})


def _check_size(height: int, width: int) -> None:
    """Refuse sizes a file cannot record, and decompression bombs (Pillow's pixel limit)."""
    side, limit = bitstream.MAX_SIDE, Image.MAX_IMAGE_PIXELS
    if not (0 < height <= side and 0 < width <= side) or (limit and height * width > limit):
        pixels = f" and {limit} pixels (Pillow's Image.MAX_IMAGE_PIXELS)" if limit else ""
        raise LictutorError(f"image size {height}×{width} is out of range: at most {side} px a side{pixels}")


def _device(model) -> torch.device:
    return next(model.parameters()).device
