"""Decoder pruning by ablation: step 3 of the three-step distillation of Fu et al. (2023).

Fu, Liang, Liang, Wang, Fang, Zhang & Han, "Fast and High-Performance Learned Image
Compression With Improved Checkerboard Context Model, Deformable Residual Module, and
Knowledge Distillation" (arXiv 2309.02529): after the student has learned from its teacher,
the decoder blocks that matter least are removed and the smaller student is trained again
with the teacher. The paper does not say how it found those blocks; we measure it:

* :func:`removable_blocks` -- the blocks of the synthesis transform ``g_s`` (by default) that
  can be replaced by the identity: the children of the ``nn.Sequential`` whose output has the
  shape of their input (GDN layers, residual and deformable residual blocks) and that have
  weights (removing a parameter-free activation saves nothing). Found by running the part
  once on a small input, not from a list of layer types, so it holds for every model.
* :func:`rank_decoder_blocks` -- ablate each block in turn (``nn.Identity`` in its place) and
  measure the rate-distortion loss ``λ · 255² · MSE + bpp`` on given images (evaluation mode:
  rounded latents, ``x̂`` clamped to [0, 1] as the decoder outputs it, bpp estimated from the
  likelihoods); the ranking puts first the block whose removal costs least.
* :func:`remove_blocks` -- a copy of the model with blocks replaced by ``nn.Identity``. The
  indices of the other blocks do not change, so its state dict is the original's minus the
  removed blocks' entries and loads every kept weight by name (``init_from=`` of
  :func:`lictutor.train.train` takes it as it is).

**Saving and loading by name.** :class:`lictutor.models.FastLIC` takes the removed blocks as a
constructor argument, ``FastLIC(N, M, removed=("g_s.2",))``, so a pruned model is an ordinary
``model_args`` entry: the trainer, the checkpoints, ``load_checkpoint`` and the command line
build it with ``models.create("fast", N=..., M=..., removed=[...])``. The ``.lic`` files it
writes carry a hash of its decoder's weights (:mod:`lictutor.evaluate`); a pruned decoder has
fewer of them, so it writes and reads its own files and refuses those of the unpruned model
(and the reverse) instead of decoding them to a wrong image. The third step in code::

    ranking = rank_decoder_blocks(student, images, lmbda)
    names = [r["block"] for r in ranking[:2]]
    pruned = remove_blocks(student, names)
    config = TrainConfig("fast", {"N": N, "M": M, "removed": list(pruned.removed)}, ...)
    train(config, teacher=teacher, init_from=pruned.state_dict())
"""

from __future__ import annotations

import copy
import re
from typing import Iterable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from lictutor.errors import LictutorError
from lictutor.images import as_batch, pad
from lictutor.losses import RateDistortionLoss

__all__ = ["removable_blocks", "rd_loss", "rank_decoder_blocks", "remove_blocks", "remove_blocks_"]

#: a probe input's spatial size to start from (cheap for a synthesis transform); doubled until
#: no block sees a 1-pixel input (a strided convolution keeps a 1x1 input 1x1)
_PROBE_SIDE, _MAX_PROBE_SIDE = 4, 256


def _part(model: nn.Module, name: str) -> nn.Sequential:
    part = dict(model.named_modules()).get(name) if name else None
    if part is None:
        raise LictutorError(f"the model {type(model).__name__} has no module {name!r}")
    if not isinstance(part, nn.Sequential):
        raise LictutorError(f"{name!r} is a {type(part).__name__}, not an nn.Sequential of blocks")
    return part


def _input_channels(part: nn.Sequential, name: str) -> int:
    for module in part.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int):
            return channels
    raise LictutorError(f"cannot tell the input channels of {name!r} (no convolution in it)")


@torch.no_grad()
def removable_blocks(model: nn.Module, parts: Sequence[str] = ("g_s",)) -> List[str]:
    """Names (``"g_s.2"``) of the children of ``parts`` that can be replaced by
    ``nn.Identity``: output shaped as their input, and holding parameters. In model order."""
    if isinstance(parts, str):
        parts = (parts,)
    names: List[str] = []
    for part_name in parts:
        part = _part(model, part_name)
        shapes = {}
        hooks = [
            child.register_forward_hook(
                lambda m, args, out, n=n: shapes.__setitem__(n, (tuple(args[0].shape), tuple(out.shape)))
            )
            for n, child in part.named_children()
        ]
        was_training = part.training
        try:
            part.eval()  # no running statistics are touched
            param = next(part.parameters(), None)
            device = param.device if param is not None else None
            dtype = param.dtype if param is not None else None
            side = _PROBE_SIDE
            while True:
                shapes.clear()
                part(torch.zeros(1, _input_channels(part, part_name), side, side, device=device, dtype=dtype))
                if side >= _MAX_PROBE_SIDE or all(min(i[2:]) >= 2 for i, _ in shapes.values()):
                    break
                side *= 2
        finally:
            part.train(was_training)
            for hook in hooks:
                hook.remove()
        for n, child in part.named_children():
            has_weights = any(True for _ in child.parameters())
            if has_weights and n in shapes and shapes[n][0] == shapes[n][1]:
                names.append(f"{part_name}.{n}")
    return names


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_names(model: nn.Module, names: Iterable[str]) -> Tuple[str, ...]:
    """``names`` in model order, each a removable block of its part."""
    if isinstance(names, str) or not all(isinstance(n, str) and "." in n for n in names):
        raise LictutorError(f"blocks must be a sequence of module names such as 'g_s.2', got {names!r}")
    names = sorted(set(names), key=_natural)
    parts = sorted({n.rsplit(".", 1)[0] for n in names})
    removable = set(removable_blocks(model, parts)) if parts else set()
    bad = [n for n in names if n not in removable]
    if bad:
        raise LictutorError(
            f"cannot remove {', '.join(bad)} from {type(model).__name__}: removable blocks of "
            f"{', '.join(parts)} are {', '.join(sorted(removable, key=_natural)) or 'none'} "
            "(blocks with weights whose output has the shape of their input, not removed already)"
        )
    return tuple(names)


def remove_blocks_(model: nn.Module, names: Iterable[str]) -> Tuple[str, ...]:
    """Replace the blocks ``names`` of ``model`` by ``nn.Identity``, in place; returns them in
    model order. A model with a ``removed`` attribute (:class:`~lictutor.models.FastLIC`)
    gets them added to it."""
    names = _check_names(model, names)
    for name in names:
        parent, child = name.rsplit(".", 1)
        setattr(_part(model, parent), child, nn.Identity())
    if hasattr(model, "removed"):
        model.removed = tuple(sorted(set(model.removed) | set(names), key=_natural))
    return names


def remove_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """A copy of ``model`` with the blocks ``names`` replaced by ``nn.Identity`` (the model is
    left as it is). Its state dict is the model's without those blocks' entries."""
    pruned = copy.deepcopy(model)
    remove_blocks_(pruned, names)
    return pruned


def _images(images) -> List[Tensor]:
    """``images`` as a list of (1, 3, H, W) float tensors in [0, 1], from a float batch tensor
    or a list of ``uint8`` H×W×3 arrays, ``(name, array)`` pairs (as
    :func:`lictutor.data.eval_images` gives) or float (3, H, W) or (1, 3, H, W) tensors
    (:func:`lictutor.images.as_batch`)."""
    items = list(images.unbind(0)) if isinstance(images, Tensor) and images.dim() == 4 else images
    items = [items] if isinstance(items, Tensor) else items
    out = []
    for item in items:
        item = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        if not ((isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3)
                or (isinstance(item, Tensor) and item.is_floating_point()
                    and (item.dim() == 3 or (item.dim() == 4 and item.size(0) == 1)))):
            raise LictutorError("images: expected uint8 H×W×3 arrays, (name, array) pairs or float "
                                "(3, H, W) or (1, 3, H, W) tensors in [0, 1]")
        try:
            out.append(as_batch(item))
        except LictutorError as err:
            raise LictutorError(f"images: {err}") from None
    if not out:
        raise LictutorError("images: need at least one image")
    return out


@torch.no_grad()
def rd_loss(model: nn.Module, images, lmbda: float, distortion: str = "mse") -> dict:
    """The mean over ``images`` of the trainer's loss ``λ · D + bpp``
    (:class:`lictutor.losses.RateDistortionLoss`) and its parts (``loss``, ``bpp``, ``mse``,
    ``psnr``), from the model's forward pass in evaluation mode (rounded latents; bpp from the
    likelihoods of the padded image, per pixel of the original; ``x̂`` cropped back and
    clamped to [0, 1]). The model's mode is restored afterwards."""
    criterion = RateDistortionLoss(lmbda, distortion)
    images = _images(images)
    param = next(model.parameters())
    was_training = model.training
    rows = []
    try:
        model.eval()
        for x in images:
            x = x.to(param.device, param.dtype)
            height, width = x.shape[-2:]
            out = model(pad(x, model.downsampling_factor))
            x_hat = out["x_hat"][..., :height, :width].clamp(0, 1)
            losses = criterion({"x_hat": x_hat, "likelihoods": out["likelihoods"]}, x)
            mse = losses["mse"].item()
            rows.append((losses["loss"].item(), losses["bpp"].item(), mse, -10 * np.log10(max(mse, 1e-10))))
    finally:
        model.train(was_training)
    loss, bpp, mse, psnr = (float(v) for v in np.mean(rows, axis=0))
    return {"loss": loss, "bpp": bpp, "mse": mse, "psnr": psnr}


@torch.no_grad()
def rank_decoder_blocks(model: nn.Module, images, lmbda: float, blocks: Sequence[str] | None = None) -> List[dict]:
    """Ablate each block (default: :func:`removable_blocks` of ``g_s``) and rank them by the
    rate-distortion loss of the model without it (:func:`rd_loss` on ``images`` at ``lmbda``),
    least harmful first.

    Each row: ``block``, ``loss``, ``bpp``, ``mse``, ``psnr`` without the block, ``delta`` (the
    increase of the loss over the whole model's, ``base_loss``) and ``params`` (the block's
    parameter count). The model is left unchanged.
    """
    blocks = removable_blocks(model) if blocks is None else list(_check_names(model, blocks))
    base = rd_loss(model, images, lmbda)
    rows = []
    for name in blocks:
        parent, child = name.rsplit(".", 1)
        part = _part(model, parent)
        block = getattr(part, child)
        setattr(part, child, nn.Identity())
        try:
            result = rd_loss(model, images, lmbda)
        finally:
            setattr(part, child, block)
        rows.append({"block": name, **result, "delta": result["loss"] - base["loss"],
                     "base_loss": base["loss"], "params": sum(p.numel() for p in block.parameters())})
    return sorted(rows, key=lambda r: r["delta"])
